import json

import pytest

import nnsight_vla
from nnsight_vla import CheckpointError, UnknownModelError
from nnsight_vla.family import Family, register
from nnsight_vla.registry import resolve


def test_openvla_is_registered_through_the_entry_point():
    family = nnsight_vla.families()["openvla"]
    assert family.config_types == ("openvla",)
    assert "tiny-openvla" in family.builtins
    assert family.load_class().__name__ == "OpenVLA"


def test_unknown_name_lists_the_families():
    with pytest.raises(UnknownModelError, match="registered families:\n  openvla"):
        nnsight_vla.load("no-such-model")


def test_folder_without_config(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        nnsight_vla.load(tmp_path)


def test_folder_with_unknown_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(UnknownModelError, match="'gpt2', which no installed plugin loads"):
        resolve(tmp_path)


def test_hub_id_offline_says_to_download(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UnknownModelError, match="Download the checkpoint"):
        resolve("openvla/openvla-7b")


def test_family_resolves_by_config_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"type": "toy"}))
    register(Family("toy", "nowhere:Toy", ("toy",)))
    try:
        assert resolve(tmp_path).name == "toy"
    finally:
        nnsight_vla.registry._extra.pop("toy")
