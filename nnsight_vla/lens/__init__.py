"""Vocabulary-projection lenses: FFN value vectors, concept clusters, rewired fraction, logit lens.

Example:
    >>> from nnsight_vla import lens
    >>> table = lens.project_value_vectors(model, top_k=10)     # norm=False: the paper's rule
    >>> table.find("up", match="nocase")                        # neurons with "up" in their top tokens
    >>> lens.cluster(table, "up", size=10).to_yaml("dictionaries.yaml")
    >>> lens.rewired_fraction(table, k=10, threshold=0.5)       # per layer
    >>> print(lens.logit_lens(model, obs).describe())
"""

from .concepts import cluster, concept_similarity
from .logit_lens import LogitLensReading, logit_lens
from .rewired import plot_rewired, rewired_fraction, rewired_mask
from .table import ValueVectorTable
from .labels import token_labels
from .value_vectors import project_value_vectors

__all__ = [
    "LogitLensReading",
    "ValueVectorTable",
    "cluster",
    "concept_similarity",
    "logit_lens",
    "plot_rewired",
    "project_value_vectors",
    "rewired_fraction",
    "rewired_mask",
    "token_labels",
]
