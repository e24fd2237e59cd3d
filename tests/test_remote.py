"""One model identity: a Hub checkpoint configures without its weights, dispatches with them, and its key pins the revision."""

import fnmatch
import shutil

import numpy as np
import pytest

import nnsight_vla
from nnsight_vla.remote import WEIGHT_FILES, rebuild

from conftest import random_image

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """Stands in for huggingface_hub's download functions: serves saved folders as repositories
    (one commit each) into a cache laid out as the Hub's, and records every file it hands out."""

    def __init__(self, cache, repos):
        self.cache, self.repos, self.fetched, self.revisions = cache, repos, [], []

    def _snapshot(self, repo_id):
        return self.cache / repo_id.replace("/", "--") / "snapshots" / COMMIT

    def _give(self, repo_id, name):
        target = self._snapshot(repo_id) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            shutil.copy(self.repos[repo_id] / name, target)
            self.fetched.append(name)

    def snapshot_download(self, repo_id, revision=None, allow_patterns=None, ignore_patterns=None, **kwargs):
        self.revisions.append(revision)
        for path in sorted(self.repos[repo_id].iterdir()):
            name = path.name
            if allow_patterns is not None and not any(fnmatch.fnmatch(name, p) for p in allow_patterns):
                continue
            if ignore_patterns is not None and any(fnmatch.fnmatch(name, p) for p in ignore_patterns):
                continue
            self._give(repo_id, name)
        return str(self._snapshot(repo_id))

    def hf_hub_download(self, repo_id, filename, revision=None, **kwargs):
        self.revisions.append(revision)
        self._give(repo_id, filename)
        return str(self._snapshot(repo_id) / filename)


def is_weight(name):
    return any(fnmatch.fnmatch(name, p) for p in WEIGHT_FILES)


@pytest.fixture
def hub(monkeypatch, tmp_path, saved_tiny):
    import huggingface_hub

    fake = FakeHub(tmp_path / "cache", {"org/tiny-openvla": saved_tiny})
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake.hf_hub_download)
    return fake


def test_lazy_load_fetches_no_weight_file_until_dispatch(hub, tiny, obs):
    assert any(is_weight(p.name) for p in hub.repos["org/tiny-openvla"].iterdir())
    model = nnsight_vla.load("org/tiny-openvla", dispatch=False, revision="main")
    assert hub.fetched and not [f for f in hub.fetched if is_weight(f)]
    assert {"config.json", "preprocessor_config.json", "tokenizer.json"} <= set(hub.fetched)
    assert not model.dispatched and model.spec == tiny.spec
    model.dispatch()
    assert sorted(f for f in hub.fetched if is_weight(f)) == sorted(
        p.name for p in hub.repos["org/tiny-openvla"].iterdir() if is_weight(p.name)
    )
    np.testing.assert_array_equal(model.predict_action(obs), tiny.predict_action(obs))


def test_lerobot_policy_configures_without_weights(monkeypatch, tmp_path):
    import huggingface_hub

    pi0 = nnsight_vla.load("tiny-pi0")
    saved = pi0.save_pretrained(tmp_path / "tiny-pi0")
    fake = FakeHub(tmp_path / "cache", {"org/tiny-pi0": saved})
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake.hf_hub_download)
    model = nnsight_vla.load("org/tiny-pi0", dispatch=False)
    assert "policy_preprocessor.json" in fake.fetched and "model.safetensors" not in fake.fetched
    assert f'"revision": "{COMMIT}"' in model._remoteable_model_key()
    model.dispatch()
    assert "model.safetensors" in fake.fetched
    obs = nnsight_vla.Observation({c: random_image(i, 64) for i, c in enumerate(pi0.spec.camera_names)},
                                  "pick up the bowl", state=[0.1] * 8)
    np.testing.assert_allclose(model.predict_action(obs), pi0.predict_action(obs), atol=1e-6)


def test_model_key_pins_the_commit_and_round_trips(hub, tiny, obs):
    model = nnsight_vla.load("org/tiny-openvla", dispatch=False, revision="main")
    key = model._remoteable_model_key()
    assert f'"revision": "{COMMIT}"' in key and '"source": "org/tiny-openvla"' in key
    hub.revisions.clear()
    twin = rebuild("nnsight_vla_openvla.model:OpenVLA", key, dispatch=True, dtype="float32", device_map="cpu")
    assert set(hub.revisions) == {COMMIT} and twin._remoteable_model_key() == key.replace('"dtype": null', '"dtype": "float32"')
    np.testing.assert_array_equal(twin.predict_action(obs), tiny.predict_action(obs))


def test_an_unreachable_hub_names_the_fix(monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("the Hub is unreachable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(nnsight_vla.UnknownModelError, match="could not provide it"):
        nnsight_vla.load("org/not-here")


def test_a_pinned_commit_in_the_hub_cache_needs_no_hub(monkeypatch, tmp_path, saved_tiny, tiny, obs):
    """An offline server rebuilds a key pinned to a commit from its Hub cache (huggingface_hub
    would ask the Hub for a commit even offline); weights only from a snapshot that has them."""
    import huggingface_hub
    from huggingface_hub import constants

    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub was asked")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    snapshot = tmp_path / "models--org--tiny-openvla" / "snapshots" / COMMIT
    shutil.copytree(saved_tiny, snapshot)
    key = f'{{"dtype": null, "revision": "{COMMIT}", "source": "org/tiny-openvla"}}'
    model = rebuild("nnsight_vla_openvla.model:OpenVLA", key, dispatch=True)
    np.testing.assert_array_equal(model.predict_action(obs), tiny.predict_action(obs))
    for path in snapshot.glob("model*"):
        path.unlink()  # configuration only: builds on meta, and dispatching asks the Hub
    meta = rebuild("nnsight_vla_openvla.model:OpenVLA", key)
    with pytest.raises(nnsight_vla.CheckpointError, match="the Hub was asked"):
        meta.dispatch()
