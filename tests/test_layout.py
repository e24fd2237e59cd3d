"""The family contract as data: what a Layout derives, and its checks against a built module."""

import pytest
import torch

from nnsight_vla import InertSiteWarning, StandardNameError
from nnsight_vla.family import Layout, TowerLayout
from nnsight_vla.layout import find


def test_openvla_layout_derives_names_lists_and_transformer_lens_components(tiny):
    layout = tiny.layout
    assert layout.rename() == {
        "vision_backbone": "vision",
        "language_model.model.layers": "layers",
        "language_model.model.norm": "ln_final",
        "language_model.lm_head": "lm_head",
    }
    components = layout.tower("vlm").transformer_lens()
    assert components["embed"] == "language_model.model.embed_tokens"
    assert (components["blocks"], components["blocks.mlp.out"], components["unembed"]) == (
        "language_model.model.layers", "mlp.down_proj", "language_model.lm_head")
    for path in ("embed", "blocks", "ln_final", "unembed"):
        tiny._module.get_submodule(components[path])


def test_pi0_layout_resolves_the_last_layer_and_aliases_the_expert():
    import nnsight_vla

    pi0 = nnsight_vla.load("tiny-pi0")
    vlm = "model.paligemma_with_expert.paligemma.model.language_model"
    assert f"{vlm}.layers.2.mlp" in pi0.layout.inert and f"{vlm}.layers.2" in pi0.layout.inert_output
    assert pi0.layout.rename()["model.paligemma_with_expert.gemma_expert.model"] == "expert"
    with pytest.warns(InertSiteWarning):
        with pi0.trace(_pi_obs(pi0)):
            pi0.layers[-1].mlp.output.save()


def _pi_obs(model):
    import numpy as np

    from nnsight_vla import Observation

    images = {c: np.zeros((64, 64, 3), np.uint8) for c in model.spec.camera_names}
    return Observation(images, "go", state=np.zeros(model.spec.state_dim))


def test_find_and_its_errors():
    net = torch.nn.Sequential(torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.ReLU()]))
    assert find(net, "0.-1") == (net[0][1], "0.1")
    with pytest.raises(StandardNameError, match="names '0.2', but 0 has 2 entries"):
        find(net, "0.2")
    with pytest.raises(StandardNameError, match=r"no submodule 'mlp' \(it has 0, 1\)"):
        find(net, "0.mlp")


def test_layouts_must_start_with_the_language_model():
    tower = TowerLayout("expert", "a.layers", "a.norm", root="a")
    with pytest.raises(StandardNameError, match="start with 'vlm'"):
        Layout((tower,))
    with pytest.raises(StandardNameError, match="needs root="):
        TowerLayout("expert", "a.layers", "a.norm").rename()
