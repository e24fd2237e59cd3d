"""Loading, saving and calling models with bad inputs: project errors that name the fix, raised
before any heavy work, leaving the model and the files as they were (issue 12)."""

import functools
import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import nnsight_vla
from nnsight_vla import CheckpointError, InputError, Observation
from nnsight_vla.cli import main
from nnsight_vla_openvla import FAMILY
from nnsight_vla_openvla.model import OpenVLA
from nnsight_vla_openvla.smol import smol_config
from nnsight_vla_openvla.tiny import tiny_config


def snapshot(folder):
    """Every file under ``folder`` with a hash of its bytes (to show nothing changed)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def ckpt(saved_tiny, tmp_path):
    """A private copy of the sharded tiny-openvla checkpoint."""
    return shutil.copytree(saved_tiny, tmp_path / "ckpt")


# -- corrupt weight files -----------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_shard_names_the_file(ckpt, damage):
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    shard = ckpt / sorted(set(index["weight_map"].values()))[1]
    data = shard.read_bytes()
    shard.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"not a safetensors file",
                       "empty": b""}[damage])
    before = snapshot(ckpt)
    with pytest.raises(CheckpointError, match=rf"{shard} is not a readable safetensors file .*truncated or corrupt\. "
                                              r"Download that file again"):
        nnsight_vla.load(ckpt)
    assert snapshot(ckpt) == before


def test_corrupt_single_file_names_the_file(tiny, tmp_path):
    folder = tiny.save_pretrained(tmp_path / "single")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=rf"{weights} is not a readable safetensors file"):
        nnsight_vla.load(folder)


# -- load arguments, checked before anything is read ---------------------------------------


def _unreachable(*args, **kwargs):
    raise AssertionError("a weight file was read")


def spy(calls):
    """OpenVLA._configure that records its calls (keeping its signature, which the option check reads)."""
    real = OpenVLA._configure

    @functools.wraps(real)
    def configure(self, *args, **kwargs):
        calls.append(args)
        return real(self, *args, **kwargs)

    return configure


def _bad_cuda():
    return f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"


@pytest.mark.parametrize(
    "device, message",
    [
        ("cpux", r"device='cpux' is not a device name; use 'cpu', 'cuda'"),
        (_bad_cuda(), "CUDA"),
        ("meta", "pass dispatch=False"),
        (3.5, "is not a device name"),
    ],
)
def test_bad_device_is_refused_before_any_weight_is_read(ckpt, monkeypatch, device, message):
    monkeypatch.setattr(nnsight_vla.checkpoint, "_load_file", _unreachable)
    configured = []
    monkeypatch.setattr(OpenVLA, "_configure", spy(configured))
    before = snapshot(ckpt)
    with pytest.raises(InputError, match=message):
        nnsight_vla.load(ckpt, device=device)
    assert configured == [] and snapshot(ckpt) == before


def test_good_devices_are_accepted(saved_tiny):
    model = nnsight_vla.load(saved_tiny, device=torch.device("cpu"))
    assert model.target_device == "cpu" and next(model._module.parameters()).device.type == "cpu"


def test_unknown_options_list_the_familys(monkeypatch):
    configured = []
    monkeypatch.setattr(OpenVLA, "_configure", spy(configured))
    with pytest.raises(InputError) as info:
        nnsight_vla.load("tiny-openvla", centre_crop=True, foo=1)
    message = str(info.value)
    assert message.startswith("OpenVLA has no option centre_crop=, foo=; its options are adapters=, center_crop=, unnorm_key=")
    assert "Did you mean center_crop= for centre_crop=?" in message
    assert configured == []


def test_a_family_without_options_says_so():
    with pytest.raises(InputError, match="Pi0 has no option unnorm_key=; its options are none"):
        nnsight_vla.load("tiny-pi0", unnorm_key="libero")


# -- predict_action ------------------------------------------------------------------------


def test_openvla_accepts_a_seed_that_changes_nothing(tiny, obs):
    plain = tiny.predict_action(obs)
    for seed in (0, 123, None):
        np.testing.assert_array_equal(tiny.predict_action(obs, seed=seed), plain)
    with tiny.predict_action(obs, seed=5) as tracer:
        traced = tracer.result.save()
    np.testing.assert_array_equal(traced, plain)
    with pytest.raises(InputError, match="has no option 'temperature'; it takes unnorm_key= .*, seed= .*phrase= .*say_and_act"):
        tiny.predict_action(obs, temperature=0.5)


def _image(seed):
    return np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "images, state, message",
    [
        ({"image": _image(0), "wrist": _image(1)}, None, r"exactly one camera, 'image' .* got \['image', 'wrist'\]"),
        ({"agentview": _image(0)}, None, r"exactly one camera, 'image' .* got \['agentview'\]"),
        (_image(0), [0.1, 0.2, 0.3], r"no proprio state \(got one of shape \(3,\)\).* drop state="),
    ],
)
def test_openvla_refuses_cameras_and_state_it_cannot_use(tiny, images, state, message):
    bad = Observation(images, "pick up the bowl", state=state)
    weights = {k: v.clone() for k, v in tiny._module.state_dict().items()}
    with pytest.raises(InputError, match=message):
        tiny.predict_action(bad)
    with pytest.raises(InputError, match=message):
        with tiny.trace(bad):
            tiny.lm_head.output.save()
    assert all(torch.equal(v, tiny._module.state_dict()[k]) for k, v in weights.items())


def test_openvla_takes_its_camera_named_or_unnamed(tiny):
    image = _image(3)
    np.testing.assert_array_equal(
        tiny.predict_action(Observation({"image": image}, "pick up the bowl")),
        tiny.predict_action(Observation(image, "pick up the bowl")),
    )
    assert tiny.spec.camera_names == ("image",) and tiny.spec.state_dim is None


# -- saving ----------------------------------------------------------------------------------


def test_save_pretrained_to_an_unwritable_path_loads_nothing(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep")
    model = nnsight_vla.load("tiny-openvla", dispatch=False)
    for target, message in [
        (blocker / "ckpt", rf"{blocker / 'ckpt'} cannot be created: {blocker} is a file, not a folder"),
        (blocker, rf"{blocker} is a file, not a folder"),
    ]:
        with pytest.raises(InputError, match=message):
            model.save_pretrained(target)
    assert not model.dispatched  # refused before the weights were loaded
    assert blocker.read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_save_pretrained_without_write_permission(tiny):
    """/proc takes no new files, not even from root (for whom permission bits prove nothing)."""
    with pytest.raises(InputError, match=r"/proc/nnsight-vla/ckpt is not writable: cannot write in /proc \("):
        tiny.save_pretrained("/proc/nnsight-vla/ckpt")


# -- where action ids end: the official rule ------------------------------------------------


def official_decode(config: dict, token_ids: np.ndarray) -> np.ndarray:
    """openvla/openvla-7b's modeling_prismatic.py, OpenVLAForActionPrediction.predict_action."""
    vocab_size = config["text_config"]["vocab_size"] - config["pad_to_multiple_of"]
    bins = np.linspace(-1, 1, config["n_action_bins"])
    bin_centers = (bins[:-1] + bins[1:]) / 2.0
    discretized = np.clip(vocab_size - token_ids - 1, a_min=0, a_max=bin_centers.shape[0] - 1)
    normalized = bin_centers[discretized]
    stats = next(iter(config["norm_stats"].values()))["action"]
    mask = np.array(stats.get("mask", np.ones_like(stats["q01"], dtype=bool)))
    high, low = np.array(stats["q99"]), np.array(stats["q01"])
    return np.where(mask, 0.5 * (normalized + 1) * (high - low) + low, normalized)


@pytest.mark.parametrize("name", FAMILY.builtins)
def test_every_builtin_ends_action_ids_where_the_official_code_does(name):
    from nnsight_vla_openvla import mini

    smol = smol_config if name == "smol-openvla" else lambda: mini.configure(smol_config(), name)
    config = tiny_config() if name == "tiny-openvla" else smol()
    end = config.text_config["vocab_size"] - config.pad_to_multiple_of
    assert config.official_action_end == config.tokenizer_vocab_size == end
    if name == "tiny-openvla":  # smol's tokenizer is read from its GGUF file: tests/test_lens_smol.py
        model = nnsight_vla.load(name, dispatch=False)
        assert model.spec.action_token_ids == range(end - 256, end)
        assert model.tokenizer.pad_token_id == end and len(model.tokenizer) == end + 1


def test_saved_checkpoint_decodes_as_the_official_code(tiny, saved_tiny):
    config = json.loads((saved_tiny / "config.json").read_text())
    assert config["text_config"]["vocab_size"] - config["pad_to_multiple_of"] == tiny.tokenizer.pad_token_id
    reloaded = nnsight_vla.load(saved_tiny)
    ids = np.array(list(reloaded.spec.action_token_ids))[None].repeat(7, 0).T  # every action id, 7 dims
    np.testing.assert_array_equal(reloaded.decode_actions(ids), official_decode(config, ids))
    np.testing.assert_array_equal(tiny.decode_actions(ids), official_decode(config, ids))


def test_a_config_the_official_code_would_decode_differently_is_refused(ckpt):
    path = ckpt / "config.json"
    config = json.loads(path.read_text())
    config["pad_to_multiple_of"] = 0  # official end: 1344, ours: 1280
    path.write_text(json.dumps(config))
    before = snapshot(ckpt)
    with pytest.raises(CheckpointError, match=r"action ids would end at 1280 \(pad_token_id\) here but at 1344 .*"
                                              r"Set pad_to_multiple_of to 64"):
        nnsight_vla.load(ckpt)
    assert snapshot(ckpt) == before


# -- the command line --------------------------------------------------------------------


def test_importing_the_cli_loads_nothing_heavy():
    code = "import sys, nnsight_vla.cli; print(sorted(m for m in ('torch', 'transformers', 'nnsight', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow  # fresh Python processes (they import torch): `make test`
def test_lazy_package_keeps_its_public_names():
    code = (
        "import nnsight_vla.testing.contract, nnsight_vla.collect\n"  # the submodule first
        "from nnsight_vla import collect, VLA, lens, Clamp\n"
        "import nnsight_vla, inspect\n"
        "assert inspect.isfunction(collect) and collect is nnsight_vla.collect, collect\n"
        "assert VLA.__module__ == 'nnsight_vla.model' and lens.__name__ == 'nnsight_vla.lens'\n"
        "assert set(nnsight_vla.__all__) <= set(dir(nnsight_vla))\n"
        "print(all(getattr(nnsight_vla, n) is not None for n in nnsight_vla.__all__))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr


def test_help_shows_defaults_and_no_markup(capsys):
    texts = {}
    for command in ([], ["lens"], ["clusters"], ["eval"]):
        with pytest.raises(SystemExit) as info:
            main([*command, "--help"])
        assert info.value.code == 0
        texts[" ".join(command)] = capsys.readouterr().out
    assert all("`" not in text for text in texts.values())
    assert "tokens kept per value vector (default: 10)" in texts["lens"]
    assert "(default: None)" not in "".join(texts.values())
    assert "--seed SEED" in texts["eval"] and "(default: 7)" in texts["eval"]
    assert "(default: 256)" in texts["eval"] and "side of the rendered camera images" in texts["eval"]
    assert "nnsight-vla lens tiny-openvla --out" in texts[""]  # examples


def test_cli_refuses_unwritable_outputs_before_loading(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep")
    monkeypatch.setattr(nnsight_vla.registry, "load", _unreachable)
    monkeypatch.setattr(nnsight_vla.lens.ValueVectorTable, "load", _unreachable)
    assert main(["lens", "tiny-openvla", "--out", str(blocker / "lens")]) == 2
    assert f"--out folder {blocker / 'lens'} cannot be created: {blocker} is a file" in capsys.readouterr().err
    assert main(["lens", "tiny-openvla", "--top-k", "0", "--out", str(tmp_path / "lens")]) == 2
    assert "--top-k 0 must be a positive integer" in capsys.readouterr().err
    assert main(["clusters", str(tmp_path), "--concept", "up", "--out", str(tmp_path)]) == 2
    assert f"--out file {tmp_path} is a folder" in capsys.readouterr().err
    assert main(["clusters", str(tmp_path), "--concept", "up", "--size", "0", "--out", str(tmp_path / "c.yaml")]) == 2
    assert "--size 0 must be a positive integer" in capsys.readouterr().err
    assert blocker.read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_outputs_that_cannot_be_written_are_refused_before_the_work(tiny, capsys, monkeypatch, tmp_path):
    """As root too: each output is checked by writing in its folder (/proc takes no new file),
    before a model loads, a probe is fitted or an activation is collected."""
    from nnsight_vla import Site
    from nnsight_vla.transformer_lens import train_sae

    def no_work(*args, **kwargs):
        raise AssertionError("the work must not start")

    monkeypatch.setattr("nnsight_vla.registry.load", no_work)
    assert main(["lens", "tiny-openvla", "--out", "/proc/x"]) == 2
    assert "--out folder /proc/x is not writable: cannot write in /proc" in capsys.readouterr().err
    monkeypatch.setattr("nnsight_vla.probes.probe_folder", no_work)
    assert main(["probe", str(tmp_path / "acts"), "--out", "/proc/p"]) == 2
    assert "--out folder /proc/p is not writable" in capsys.readouterr().err
    monkeypatch.setattr("nnsight_vla.transformer_lens.sae_training.activation_rows", no_work)
    with pytest.raises(InputError, match=r"SAE folder /proc/nope/sae is not writable: cannot write in /proc"):
        train_sae(tiny, [Observation(np.zeros((64, 64, 3), np.uint8), "pick up the bowl")], Site(1, "resid"),
                  "/proc/nope/sae", d_sae=64)


def test_lens_on_a_tower_without_a_vocabulary_names_what_the_cli_can_do(capsys, monkeypatch, tmp_path):
    def no_projection(*args, **kwargs):
        raise AssertionError("the projection must not start")

    monkeypatch.setattr("nnsight_vla.lens.project_value_vectors", no_projection)
    assert main(["lens", "tiny-pi0", "--tower", "expert", "--out", str(tmp_path / "lens")]) == 2
    err = capsys.readouterr().err
    assert "--tower expert: that tower has no vocabulary" in err and "omit --tower" in err
    assert "pass unembed=" not in err


@pytest.mark.slow  # fresh Python processes (they import torch): `make test`
def test_the_model_class_stands_below_the_features():
    """The base class imports no feature package: steering, lenses and collection build on it."""
    code = "import sys, nnsight_vla.model; print(sorted(m for m in sys.modules if m.startswith('nnsight_vla.')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "nnsight_vla.model" in loaded
    for feature in ("nnsight_vla.steering", "nnsight_vla.lens", "nnsight_vla.collect", "nnsight_vla.probes",
                    "nnsight_vla.eval", "nnsight_vla.transformer_lens"):
        assert f"'{feature}" not in loaded, feature
