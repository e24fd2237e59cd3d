"""SAE-Lens SAEs at VLA hook points: loading and site checks, features through nnsight, feature
steering (trace, model.steer, TransformerLens bridge), training on collected activations."""

import json

import numpy as np
import pytest
import torch

from nnsight_vla import CheckpointError, InputError, Observation, Site, collect
from nnsight_vla.steering import apply, hook_points, random_control
from nnsight_vla.transformer_lens import (
    ClampFeatures,
    ScaleFeatures,
    activation_rows,
    attach_sae,
    bridge_inputs,
    feature_hooks,
    fit_sae,
    load_sae,
    sae_features,
    sae_site,
    to_bridge,
    to_sae_bridge,
    train_sae,
)

sae_lens = pytest.importorskip("sae_lens")
from sae_lens import SAE, StandardSAE, StandardSAEConfig  # noqa: E402

pytestmark = pytest.mark.xdist_group("sae")  # one worker builds the module's fixtures

D_SAE = 8


def make_sae(hook: str, d_in: int, d_sae: int = D_SAE) -> StandardSAE:
    cfg = StandardSAEConfig(d_in=d_in, d_sae=d_sae, dtype="float32", device="cpu")
    cfg.metadata.hook_name = hook
    return StandardSAE(cfg)


def directions(d_in: int, n: int = D_SAE, seed: int = 0) -> torch.Tensor:
    u = torch.from_numpy(np.random.default_rng(seed).standard_normal((n, d_in))).float()
    return u / u.norm(dim=1, keepdim=True)


def hand_sae(hook: str = "blocks.0.hook_resid_post", d_in: int = 64) -> StandardSAE:
    """Feature k reads coordinate k (f_k = relu(x_k)) and writes the unit direction u_k."""
    sae = make_sae(hook, d_in)
    with torch.no_grad():
        for p in (sae.W_enc, sae.b_enc, sae.b_dec):
            p.zero_()
        sae.W_enc[torch.arange(D_SAE), torch.arange(D_SAE)] = 1.0
        sae.W_dec.copy_(directions(d_in))
    return sae


def random_sae(hook: str, d_in: int, seed: int = 0, d_sae: int = 32) -> StandardSAE:
    torch.manual_seed(seed)
    sae = make_sae(hook, d_in, d_sae)
    with torch.no_grad():
        sae.b_enc.normal_(0.0, 0.1)  # about half the features fire
        sae.b_dec.normal_(0.0, 0.1)
    return sae


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (256, 256, 3), dtype=np.uint8)


# -- loading and site checks --------------------------------------------------------------------


def test_saved_sae_loads_back_checked_against_its_site(tiny, tmp_path):
    for hook, width, site in [("blocks.1.hook_resid_post", 64, Site(1, "resid")),
                              ("blocks.1.mlp.hook_post", 256, Site(1, "neurons")),
                              ("blocks.0.hook_mlp_out", 64, Site(0, "mlp_out")),
                              ("blocks.0.hook_attn_out", 64, Site(0, "attn_out"))]:
        sae = random_sae(hook, width)
        folder = tmp_path / hook
        sae.save_model(folder)  # SAE-Lens's own format
        loaded = load_sae(folder, tiny)
        assert type(loaded) is StandardSAE and sae_site(tiny, loaded) == site
        assert loaded.cfg.metadata.hook_name == hook and loaded.cfg.d_in == width
        for name, value in sae.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], value), name


def test_width_and_hook_errors(tiny, tmp_path):
    narrow = make_sae("blocks.1.hook_resid_post", 32)
    with pytest.raises(InputError, match=r"d_in=32.*width 64 \(d_model\)"):
        sae_site(tiny, narrow)
    narrow.save_model(tmp_path / "narrow")
    with pytest.raises(InputError, match=r"d_in=32.*width 64"):
        load_sae(tmp_path / "narrow", tiny)
    load_sae(tmp_path / "narrow")  # no model: nothing to check against
    with pytest.raises(InputError, match=r"d_in=64.*width 256 \(d_mlp\)"):
        sae_site(tiny, make_sae("blocks.1.mlp.hook_post", 64))
    with pytest.raises(InputError, match=r"d_in=32.*width 64"):
        attach_sae(to_bridge(tiny), narrow)
    with pytest.raises(InputError, match=r"d_in=32.*width 64"):
        with tiny.steer(ClampFeatures(narrow, [0], 1.0)):
            pass
    for hook in ("blocks.1.hook_resid_mid", "blocks.0.attn.hook_z", "hook_embed"):
        with pytest.raises(InputError, match="is not one of the hook points"):
            sae_site(tiny, make_sae(hook, 64))
        with pytest.raises(InputError, match="is not one of the hook points"):
            attach_sae(to_bridge(tiny), make_sae(hook, 64))
    with pytest.raises(InputError, match="hook_name is empty"):
        sae_site(tiny, make_sae(None, 64))
    transcoder = make_sae("blocks.1.mlp.hook_post", 256)
    transcoder.cfg.metadata.hook_name_out = "blocks.1.hook_mlp_out"
    with pytest.raises(InputError, match="transcoder"):
        sae_site(tiny, transcoder)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_sae(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "cfg.json").write_text("{}")
    with pytest.raises(CheckpointError, match="lacks sae_weights.safetensors"):
        load_sae(tmp_path / "half")
    sae = hand_sae()
    with pytest.raises(InputError, match=r"features \[8\] are out of range.*d_sae=8"):
        ClampFeatures(sae, [1, 8], 1.0)
    with pytest.raises(InputError, match="feature indices"):
        ScaleFeatures(sae, [], 1.0)
    with pytest.raises(InputError, match="finite"):
        ClampFeatures(sae, 1, float("nan"))
    with pytest.raises(InputError, match="not an SAE-Lens SAE"):
        ClampFeatures(torch.nn.Linear(2, 2), 0, 1.0)


# -- features through nnsight ---------------------------------------------------------------------


def test_features_are_the_encoded_collected_activations(tiny, obs, obs_long):
    sae = hand_sae("blocks.1.hook_resid_post")
    feats = sae_features(tiny, sae, [obs, obs_long], calls="actions", positions="last")
    acts = collect(tiny, [obs, obs_long], [Site(1, "resid")], calls="actions", positions="last")[Site(1, "resid")]
    assert feats.shape == (2, 7, 1, D_SAE)
    assert torch.equal(feats, acts[..., :D_SAE].relu())  # f_k = relu(x_k), exactly
    assert (feats > 0).any() and (feats == 0).any()
    neurons = random_sae("blocks.1.mlp.hook_post", 256)
    feats = sae_features(tiny, neurons, obs, calls="prefill", positions="all")
    with tiny.trace(obs):
        x = Site(1, "neurons").read(tiny).save()
    with torch.no_grad():
        expected = (x - neurons.b_dec) @ neurons.W_enc + neurons.b_enc
    torch.testing.assert_close(feats[0, 0], expected[0].relu(), rtol=0, atol=1e-6)


# -- steering through nnsight -------------------------------------------------------------------


def test_an_untouched_sae_changes_nothing(tiny, obs):
    saes = [random_sae("blocks.0.hook_resid_post", 64), random_sae("blocks.1.mlp.hook_post", 256, seed=1)]
    untouched = [ScaleFeatures(s, list(range(32)), 1.0) for s in saes]
    plain = tiny.predict_action(obs)
    with tiny.steer(untouched):
        steered = tiny.predict_action(obs)
    np.testing.assert_array_equal(steered, plain)
    with tiny.trace(obs):
        reference = tiny.lm_head.output.save()
    with tiny.trace(obs):
        for intervention in untouched:
            intervention.apply(tiny, 0)
        traced = tiny.lm_head.output.save()
    assert torch.equal(traced, reference)  # bit for bit: the change decode(f') - decode(f) is exactly 0


def test_clamping_a_feature_writes_its_decoder_direction(tiny, obs):
    """Clamping feature k of the hand-built SAE to v adds (v - relu(x_k)) u_k at the site."""
    sae, k, value = hand_sae("blocks.0.hook_resid_post"), 2, 3.0
    u = directions(64)[k]
    with tiny.trace(obs):
        x0 = Site(0, "resid").read(tiny).save()
    for clamp, hand in [(ClampFeatures(sae, [k], value), lambda x: x + (value - x[..., k:k + 1].relu()) * u),
                        (ScaleFeatures(sae, k, 0.0), lambda x: x - x[..., k:k + 1].relu() * u)]:
        with tiny.trace(obs):
            clamp.apply(tiny, 0)
            x1 = tiny.layers[1].input.save()  # layer 0's output after the edit
            logits = tiny.lm_head.output.save()
        torch.testing.assert_close(x1, hand(x0), rtol=0, atol=1e-6)

        def hook(x, call):
            return hand(x)

        from nnsight_vla.sites import hooked

        with hooked(tiny, {Site(0, "resid"): hook}):  # a plain torch hook as the reference
            with tiny.trace(obs):
                reference = tiny.lm_head.output.save()
        torch.testing.assert_close(logits, reference, rtol=0, atol=1e-5)
    assert ((value - x0[..., k].relu()).abs() > 0.5).all()  # the edit is large at every position

    # every call: model.steer, a traced prediction and a torch hook agree on the actions
    clamp = ClampFeatures(sae, [k, 5], 4.0)
    with tiny.steer(clamp):
        steered = tiny.predict_action(obs)
    with tiny.predict_action(obs) as tracer:
        for step in tracer.iter[:7]:
            clamp.apply(tiny, step)
        traced = tracer.result.save()
    w = directions(64)[[k, 5]]
    with hooked(tiny, {Site(0, "resid"): lambda x, call: x + (4.0 - x[..., [k, 5]].relu()) @ w}):
        hand_actions = tiny.predict_action(obs)
    np.testing.assert_array_equal(steered, np.asarray(traced))
    np.testing.assert_array_equal(steered, hand_actions)
    assert not np.array_equal(steered, tiny.predict_action(obs))


def test_positions_and_calls_limit_the_edit(tiny, obs):
    sae = hand_sae("blocks.0.hook_resid_post")
    with tiny.trace(obs):
        x0 = Site(0, "resid").read(tiny).save()
    with tiny.trace(obs):
        ClampFeatures(sae, [1], 5.0, positions=[-1, 3]).apply(tiny, 0)
        x1 = tiny.layers[1].input.save()
    changed = (x1 != x0).any(-1)[0]
    assert changed.nonzero().flatten().tolist() == [3, x0.shape[1] - 1]
    seen = []
    with tiny.steer(ClampFeatures(sae, [1], 5.0, calls="prefill")):
        from nnsight_vla.sites import hooked

        with hooked(tiny, {Site(1, "resid"): lambda x, call: seen.append(call)}):
            tiny.predict_action(obs)
    assert seen == list(range(7))


def test_random_control_keeps_the_sae_and_the_count(tiny):
    clamp = ClampFeatures(random_sae("blocks.0.hook_resid_post", 64, d_sae=64), [1, 2, 3], 2.0)
    control = random_control(clamp, seed=0, model=tiny)[0]
    assert control.sae is clamp.sae and len(control.features) == 3 and control.value == 2.0
    assert control.features != clamp.features
    # evaluation runs record the steering: the hook, the features and a hash of the SAE's weights
    from nnsight_vla.eval.records import describe_steering

    described = describe_steering(clamp)[0]
    json.dumps(described)
    assert described["hook_name"] == "blocks.0.hook_resid_post" and described["features"] == [1, 2, 3]
    other = ClampFeatures(random_sae("blocks.0.hook_resid_post", 64, seed=5, d_sae=64), [1, 2, 3], 2.0)
    assert describe_steering(other) != [described]


# -- through the TransformerLens bridge ---------------------------------------------------------


@pytest.fixture(scope="module")
def saes():
    return [random_sae("blocks.0.hook_resid_post", 64), random_sae("blocks.1.mlp.hook_post", 256, seed=1)]


@pytest.fixture(scope="module")
def sae_bridge(tiny, saes):
    return to_sae_bridge(tiny, saes)


def test_bridge_with_saes_attached_equals_the_plain_bridge(tiny, obs, saes, sae_bridge):
    from sae_lens.analysis.sae_transformer_bridge import SAETransformerBridge

    inputs = bridge_inputs(tiny, obs)
    plain = to_bridge(tiny)(**inputs)
    assert isinstance(sae_bridge, SAETransformerBridge)
    assert sae_bridge.acts_to_saes == {s.cfg.metadata.hook_name: s for s in saes}
    logits, cache = sae_bridge.run_with_cache(**inputs)
    torch.testing.assert_close(logits, plain, rtol=0, atol=2e-6)  # error term on
    for sae in saes:  # the attached SAE's features are sae_features at the prefill
        feats = sae_features(tiny, sae, obs, calls="prefill")
        torch.testing.assert_close(cache[sae_bridge.get_sae_hook_name(sae)], feats[:, 0], rtol=0, atol=1e-5)
        assert (feats > 0).float().mean() > 0.2


def test_steering_features_through_the_bridge_equals_nnsight(tiny, obs, saes, sae_bridge):
    inputs = bridge_inputs(tiny, obs)
    with tiny.trace(obs):
        plain = tiny.lm_head.output.save()
    for steer in ([ClampFeatures(saes[0], [0, 4, 9], 3.0, calls="prefill")],
                  [ScaleFeatures(saes[1], list(range(16)), 0.0, calls="prefill"),
                   ClampFeatures(saes[0], [7], -2.0, positions=[-1, 5], calls="prefill")]):
        through_bridge = sae_bridge.run_with_hooks(**inputs, fwd_hooks=feature_hooks(sae_bridge, steer))
        with tiny.trace(obs):
            apply(tiny, steer, 0)  # the list, in execution order
            through_nnsight = tiny.lm_head.output.save()
        plain_bridge = to_bridge(tiny).run_with_hooks(**inputs, fwd_hooks=hook_points(tiny, steer))
        torch.testing.assert_close(through_bridge, through_nnsight, rtol=0, atol=1e-5)
        torch.testing.assert_close(plain_bridge, through_nnsight, rtol=0, atol=1e-5)
        assert (through_nnsight - plain).abs().max() > 1e-2  # the steering did something
    unattached = ClampFeatures(random_sae("blocks.1.hook_resid_post", 64), [0], 1.0)
    with pytest.raises(InputError, match="not attached to the bridge"):
        feature_hooks(sae_bridge, unattached)


# -- training --------------------------------------------------------------------------------------


def test_train_sae_saves_loads_and_reconstructs_held_out_rows(tiny, tmp_path, capfd, monkeypatch):
    from nnsight_vla.transformer_lens import sae_training as sae_module

    used = []  # the rows train_sae trains on, to train on them again through fit_sae
    collect_rows = sae_module.activation_rows
    monkeypatch.setattr(sae_module, "activation_rows", lambda *a, **k: used.append(collect_rows(*a, **k)) or used[-1])
    words = ["pick up the black bowl", "put the bowl on the plate", "open the top drawer slowly"]
    train = [Observation(image(10 + i), words[i % 3]) for i in range(9)]  # 9 prefills, ~2,500 rows
    held_out = [Observation(image(100), words[0]), Observation(image(101), "pick up the red cup")]
    site = Site(1, "resid")
    folder = tmp_path / "sae"
    sae = train_sae(tiny, train, site, folder, d_sae=128, steps=600, batch_size=128, seed=0)
    assert "train_sae blocks.1.hook_resid_post" in capfd.readouterr().err  # the tqdm bar
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == "standard" and cfg["d_in"] == 64 and cfg["d_sae"] == 128
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    assert cfg["metadata"]["model_name"] == "tiny-openvla"
    again = SAE.load_from_disk(folder)  # SAE-Lens's own loader
    for name, value in sae.state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name
    assert sae_site(tiny, sae) == site

    rows = activation_rows(tiny, held_out, site)
    assert rows.shape[1] == 64 and len(rows) > 500
    zero = make_sae(site.hook_name, 64, 128)
    with torch.no_grad():
        for p in zero.parameters():
            p.zero_()
        recon = sae.decode(sae.encode(rows))
        mse = (recon - rows).pow(2).sum(-1).mean()
        zero_mse = (zero.decode(zero.encode(rows)) - rows).pow(2).sum(-1).mean()
        variance = (rows - rows.mean(0)).pow(2).sum(-1).mean()
    assert torch.equal(zero_mse, rows.pow(2).sum(-1).mean())
    assert mse < 0.1 * zero_mse and mse < 0.5 * variance  # far better than nothing and than the mean
    feats = sae_features(tiny, sae, held_out[0], calls="prefill")
    assert 0 < (feats > 0).float().sum(-1).mean() < 0.75 * 128  # the L1 penalty leaves features off

    # the same rows through fit_sae give the same SAE (seeded)
    assert len(used) == 1 and used[0].shape[1] == 64 and len(used[0]) > 2000
    refit = fit_sae(used[0], site.hook_name, tmp_path / "refit", d_sae=128, steps=600, batch_size=128,
                    seed=0, model_name="tiny-openvla", progress=False)
    for name, value in sae.state_dict().items():
        assert torch.equal(refit.state_dict()[name], value), name


def test_training_errors(tiny, obs, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        train_sae(tiny, [obs], Site(1, "resid"), tmp_path / "file", d_sae=16)
    with pytest.raises(InputError, match="fewer than batch_size=256"):
        fit_sae(torch.randn(100, 64), "blocks.1.hook_resid_post", tmp_path / "s", d_sae=16)
    with pytest.raises(InputError, match="is not one of the hook points"):
        fit_sae(torch.randn(300, 64), "blocks.1.attn.hook_z", tmp_path / "s", d_sae=16)
    with pytest.raises(InputError, match="d_sae=0"):
        fit_sae(torch.randn(300, 64), "blocks.1.hook_resid_post", tmp_path / "s", d_sae=0)
    with pytest.raises(InputError, match="NaN"):
        fit_sae(torch.full((300, 64), float("nan")), "blocks.1.hook_resid_post", tmp_path / "s", d_sae=16)
    assert not (tmp_path / "s").exists()
