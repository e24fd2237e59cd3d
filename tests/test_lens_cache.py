"""Lens tables kept on disk: read back for the same weights and settings only."""

import numpy as np
import pytest
import torch

import nnsight_vla
from nnsight_vla.lens import project_value_vectors


def test_a_projection_is_kept_and_read_back_for_the_same_weights_only(tiny, monkeypatch, tmp_path):
    monkeypatch.setenv("NNSIGHT_VLA_HOME", str(tmp_path))
    edited = nnsight_vla.load("tiny-openvla")  # tiny-openvla with one value vector changed
    with torch.no_grad():
        edited._module.language_model.model.layers[1].mlp.down_proj.weight[:, 3] = 5.0
    made = project_value_vectors(edited, top_k=10, batch_size=50, progress=False)
    files = list((tmp_path / "lens").glob("*.safetensors"))
    assert len(files) == 1

    def no_matmul(*args, **kwargs):
        raise AssertionError("projected again")

    with monkeypatch.context() as patch:
        patch.setattr(torch, "mm", no_matmul)
        again = project_value_vectors(edited, top_k=10, batch_size=50, progress=False)  # read back
        with pytest.raises(AssertionError, match="projected again"):
            project_value_vectors(edited, top_k=10, batch_size=50, progress=False, cached=False)
        with pytest.raises(AssertionError, match="projected again"):  # other settings: another table
            project_value_vectors(edited, top_k=9, batch_size=50, progress=False)
        with pytest.raises(AssertionError, match="projected again"):  # other weights: another table
            project_value_vectors(tiny, top_k=10, batch_size=50, progress=False)
    np.testing.assert_array_equal(again.ids, made.ids)
    np.testing.assert_array_equal(again.scores, made.scores)
    other = project_value_vectors(tiny, top_k=10, batch_size=50, progress=False)
    assert not np.array_equal(other.ids, made.ids) and len(list((tmp_path / "lens").glob("*.safetensors"))) == 2
    files[0].write_bytes(files[0].read_bytes()[:-8] + b"damaged!")  # a damaged file is made again
    np.testing.assert_array_equal(project_value_vectors(edited, top_k=10, batch_size=50, progress=False).ids, made.ids)
