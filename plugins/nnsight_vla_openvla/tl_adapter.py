"""TransformerLens adapter for OpenVLA's language model, registered as ``OpenVLAForActionPrediction``."""

from transformer_lens.model_bridge.supported_architectures.llama import LlamaArchitectureAdapter

from nnsight_vla.family import relocate

from .model import OpenVLA


class OpenVLAAdapter(LlamaArchitectureAdapter):
    """OpenVLA's Llama: the Llama adapter's components at the paths of the family's layout."""

    def __init__(self, cfg):
        super().__init__(cfg)
        relocate(self, OpenVLA.layout.tower("vlm"), root="language_model")
