"""TransformerLens bridges of Pi0 / Pi0.5's two towers: parity with nnsight at each tower's
first forward, the towers' real inputs, shared weights, hooks on predictions."""

import warnings

import nnsight
import numpy as np
import pandas as pd
import pytest
import torch

import nnsight_vla
from nnsight_vla import Clamp, InertSiteWarning, InputError, Site
from nnsight_vla.steering import hook_points
from nnsight_vla.transformer_lens import bridge_inputs, hooks, to_bridge

from conftest import random_image

pytestmark = pytest.mark.xdist_group("transformer_lens_pi0")  # one worker builds the module's fixtures

NEURONS, VALUE = [0, 5, 9, 17], 5.0
ORDER = ("attn_out", "neurons", "mlp_out", "resid")  # the order a layer computes them
PARTS = [("tiny-pi0", "vlm"), ("tiny-pi0", "expert"), ("tiny-pi05", "vlm"), ("tiny-pi05", "expert")]


@pytest.fixture(scope="module")
def models():
    """tiny-pi0 and tiny-pi05 with random norm weights: lerobot initialises the norms' weights
    (and Pi0.5's adaptive-norm projections) to zero, which would hide a norm or a time
    condition the bridge got wrong."""
    out = {}
    generator = torch.Generator().manual_seed(0)
    for name in ("tiny-pi0", "tiny-pi05"):
        model = nnsight_vla.load(name)
        with torch.no_grad():
            for key, param in model._module.named_parameters():
                if "norm" in key and "vision" not in key:
                    param.copy_(0.3 * torch.randn(param.shape, generator=generator))
        out[name] = model
    return out


@pytest.fixture(scope="module")
def obs():
    images = {"image": random_image(0, 64), "image2": random_image(100, 64)}
    state = np.linspace(-1, 1, 8) / 4
    return nnsight_vla.Observation(images, "pick up the black bowl", state=state)


@pytest.fixture(scope="module")
def bridges(models):
    return {(name, part): to_bridge(models[name], part) for name, part in PARTS}


def final_normed(model, part):
    """The tower's final-norm output, read in a trace at its first forward."""
    with warnings.catch_warnings():  # the VLM's final norm is inert (the expert never reads it)
        warnings.simplefilter("ignore", InertSiteWarning)
        norm = model.ln_final if part == "vlm" else model.expert.norm
        return norm.output[0].save()


@pytest.mark.parametrize("name, part", PARTS)
def test_run_with_cache_equals_nnsight_at_every_site(models, bridges, obs, name, part):
    model, bridge = models[name], bridges[name, part]
    inputs = bridge_inputs(model, obs, part)
    out, cache = bridge.run_with_cache(**inputs)
    tower = model.towers()[part]
    sites = [Site(layer, kind, part) for layer in range(tower.n_layers) for kind in ORDER]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InertSiteWarning)  # the VLM's last layer
        with model.trace(obs, seed=0):  # the expert's sites: its first forward, denoising step 0
            read = nnsight.save([])
            for site in sites:
                read.append(site.read(model).clone())
            final = final_normed(model, part)
            velocity = model.action_out_proj.output.save()
    for site, value in zip(sites, read):
        torch.testing.assert_close(cache[site.hook_name], value, rtol=0, atol=1e-5, msg=str(site))
    pattern = cache["blocks.0.attn.hook_pattern"]  # [batch, heads, query, key]
    assert pattern.shape[-1] == inputs["attention_mask"].shape[-1]
    torch.testing.assert_close(pattern.sum(-1), torch.ones_like(pattern.sum(-1)))
    torch.testing.assert_close(cache["ln_final.hook_out"], final, rtol=0, atol=1e-5)
    if part == "vlm":  # the logits: lm_head on the final-normed output
        torch.testing.assert_close(out, model.lm_head._module(final), rtol=0, atol=1e-5)
        assert torch.equal(cache["hook_unembed"], out)
    else:  # the final-normed output, whose last chunk_size positions make step 0's velocity
        torch.testing.assert_close(out, final, rtol=0, atol=1e-5)
        chunk = model.spec.chunk_size
        head = model.action_out_proj._module
        torch.testing.assert_close(head(out[:, -chunk:]), velocity, rtol=0, atol=1e-5)
        assert torch.equal(bridge(**inputs), out)  # the VLM's keys and values are not extended


def test_bridge_inputs_are_the_towers_inputs_at_the_first_forward(models, obs):
    for name, model in models.items():
        vlm, expert = bridge_inputs(model, obs, "vlm"), bridge_inputs(model, obs, "expert")
        assert sorted(vlm) == ["attention_mask", "input", "position_ids"]
        prefix = vlm["input"].shape[1]  # image patches and instruction tokens
        assert vlm["attention_mask"].shape == (1, 1, prefix, prefix)  # the prefix-LM mask, 4D
        cache = expert["past_key_values"]
        assert cache.get_seq_length() == prefix
        assert len(cache.layers) == model.towers()["expert"].n_layers
        suffix = expert["input"].shape[1]
        assert expert["attention_mask"].shape == (1, 1, suffix, prefix + suffix)
        assert expert["position_ids"][0, 0] == vlm["position_ids"].max() + 1
        policy = model._module.model
        noise = model.noise(1, 0)  # seed 0: denoising step 0 starts from this noise, at t = 1
        if name == "tiny-pi05":  # the actions alone, and the time as the adaptive norms' condition
            assert torch.equal(expert["input"], policy.action_in_proj(noise))
            silu = torch.nn.functional.silu
            time = silu(policy.time_mlp_out(silu(policy.time_mlp_in(sinusoid(policy, 1.0)))))
            assert torch.equal(expert["adarms_cond"], time)
        else:  # the state token, then the actions; no condition
            assert "adarms_cond" not in expert and suffix == 1 + model.spec.chunk_size


def sinusoid(policy, t):
    """lerobot's embedding of the flow-matching time ``t`` (1 at the first denoising step)."""
    from lerobot.policies.common.vla_utils import create_sinusoidal_pos_embedding

    width, config = policy.action_in_proj.out_features, policy.config
    embedding = create_sinusoidal_pos_embedding(torch.full((1,), t), width, config.min_period,
                                                config.max_period, device=torch.device("cpu"))
    return embedding.float()


def test_the_adaptive_norms_read_the_condition_and_gate_the_residual(models, bridges, obs):
    inputs = bridge_inputs(models["tiny-pi05"], obs, "expert")
    bridge = bridges["tiny-pi05", "expert"]
    out, cache = bridge.run_with_cache(**inputs)
    other = bridge(**{**inputs, "adarms_cond": inputs["adarms_cond"] * 0.5})
    assert not torch.allclose(out, other, atol=1e-3)
    for layer in range(3):  # what each sublayer adds to the residual stream is gated
        block = lambda hook: cache[f"blocks.{layer}.{hook}"]  # noqa: E731
        mid = block("hook_resid_pre") + block("ln1.hook_gate") * block("hook_attn_out")
        torch.testing.assert_close(mid, block("hook_resid_mid"), rtol=0, atol=1e-5)
        post = mid + block("ln2.hook_gate") * block("hook_mlp_out")
        torch.testing.assert_close(post, block("hook_resid_post"), rtol=0, atol=1e-5)
    assert not any(k.endswith("hook_gate") for k in bridges["tiny-pi0", "expert"].run_with_cache(
        **bridge_inputs(models["tiny-pi0"], obs, "expert"))[1].keys())  # Pi0's norms have no gate


@pytest.mark.parametrize("name", ["tiny-pi0", "tiny-pi05"])
def test_the_bridges_share_weights_and_leave_the_model_alone(models, bridges, obs, name):
    model = models[name]
    state = {k: v.clone() for k, v in model._module.state_dict().items()}
    classes = {k: type(m) for k, m in model._module.named_modules()}
    action = model.predict_action(obs, seed=0)
    ours = {t.data_ptr() for t in model._module.parameters()}
    for part in ("vlm", "expert"):
        bridge = to_bridge(model, part)
        bridge(**bridge_inputs(model, obs, part))
        added = {n: t for n, t in bridge.named_parameters() if t.data_ptr() not in ours}
        # no second copy of any weight: only TransformerLens's zero unembedding bias is new
        assert list(added) == (["lm_head._original_component.bias"] if part == "vlm" else [])
        assert not any(t.any() for t in added.values())
    assert {k: type(m) for k, m in model._module.named_modules()} == classes
    assert list(model._module.state_dict()) == list(state)
    assert all(torch.equal(v, state[k]) for k, v in model._module.state_dict().items())
    np.testing.assert_array_equal(model.predict_action(obs, seed=0), action)


@pytest.mark.parametrize("name", ["tiny-pi0", "tiny-pi05"])
def test_transformer_lens_hooks_steer_the_expert_as_clamp_does(models, obs, name):
    model = models[name]

    def clamp(acts, hook):
        acts[..., NEURONS] = VALUE
        return acts

    calls = []

    def count(acts, hook):
        calls.append(hook.call)

    fwd_hooks = [("blocks.1.mlp.hook_post", clamp), ("blocks.0.hook_resid_post", count)]
    with hooks(model, fwd_hooks, tower="expert"):
        hooked = model.predict_action(obs, seed=0)
    with model.steer(Clamp([(1, n) for n in NEURONS], VALUE, tower="expert")):
        steered = model.predict_action(obs, seed=0)
    np.testing.assert_array_equal(hooked, steered)
    assert not np.array_equal(hooked, model.predict_action(obs, seed=0))
    assert calls == list(range(model.spec.extra["num_inference_steps"]))


def test_steering_converts_to_expert_bridge_hooks(models, bridges, obs):
    model = models["tiny-pi05"]
    clamp = Clamp([(1, n) for n in NEURONS], VALUE, tower="expert", steps=[0])
    assert hook_points(model, clamp) == []  # another tower's bridge
    bridge, inputs = bridges["tiny-pi05", "expert"], bridge_inputs(model, obs, "expert")
    out = bridge.run_with_hooks(**inputs, fwd_hooks=hook_points(model, clamp, tower="expert"))
    with model.trace(obs, seed=0):
        clamp.apply(model, 0)
        final = final_normed(model, "expert")
    torch.testing.assert_close(out, final, rtol=0, atol=1e-5)
    assert not torch.allclose(out, bridge(**inputs), atol=1e-3)


@pytest.mark.parametrize("name", ["tiny-pi0", "tiny-pi05"])
def test_compatibility_mode_on_the_vlm_and_refused_on_the_expert(models, bridges, obs, name):
    model = models[name]
    inputs = bridge_inputs(model, obs, "vlm")
    folded = to_bridge(model, "vlm", compatibility=True)
    logits, cache = folded.run_with_cache(**inputs)
    raw = bridges[name, "vlm"](**inputs)
    torch.testing.assert_close(logits.log_softmax(-1), raw.log_softmax(-1), rtol=0, atol=1e-4)
    resid = cache.accumulated_resid(apply_ln=True)  # the logit lens through the final norm
    torch.testing.assert_close(resid[-1] @ folded.W_U + folded.b_U, logits, rtol=0, atol=1e-4)
    why = "adaptive" if name == "tiny-pi05" else "no unembedding"
    with pytest.raises(InputError, match=f"compatibility mode cannot apply to part 'expert'.*{why}"):
        to_bridge(model, "expert", compatibility=True)


def test_adapters_registered_by_entry_point_and_bad_parts(models, obs):
    from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory

    to_bridge(models["tiny-pi0"], "expert")
    adapters = ArchitectureAdapterFactory._adapters
    for name in ("PiGemmaVLM", "PiGemmaExpert"):
        assert adapters[name].__module__ == "nnsight_vla_lerobot.tl_adapter"
    model = models["tiny-pi0"]
    with pytest.raises(InputError, match=r"part 'action_head'; use one of \['expert', 'vlm'\]"):
        to_bridge(model, "action_head")
    with pytest.raises(InputError, match="no TransformerLens part 'vision'"):
        bridge_inputs(model, obs, "vision")


@pytest.mark.parametrize("name", ["tiny-pi0", "tiny-pi05"])
def test_token_inputs_run_transformer_lens_patching_on_the_vlm(models, bridges, obs, name):
    import transformer_lens.patching as patching

    from nnsight_vla.transformer_lens import token_inputs

    model, bridge = models[name], bridges[name, "vlm"]
    own = bridge_inputs(model, obs, "vlm")
    reference = bridge(**own)
    corrupt = nnsight_vla.Observation(obs.images, "put the cream cheese in the basket now", obs.state)
    with token_inputs(model, bridge, obs) as clean_tokens:
        clean_logits, clean_cache = bridge.run_with_cache(clean_tokens)  # the policy's mask and positions
        torch.testing.assert_close(clean_logits, reference, rtol=0, atol=1e-5)
        with token_inputs(model, bridge, corrupt) as corrupt_tokens:
            corrupt_logits = bridge(corrupt_tokens)
            torch.testing.assert_close(corrupt_logits, bridge(**bridge_inputs(model, corrupt, "vlm")), rtol=0, atol=1e-5)
        assert corrupt_tokens.shape == clean_tokens.shape  # lerobot pads every instruction to one length
        last = int(own["attention_mask"][0, 0, 0].eq(0).nonzero().max())  # the last valid prefix position
        target = int(clean_logits[0, last].argmax())

        def metric(logits):
            return logits[0, last, target] - corrupt_logits[0, last, target]

        differ = (clean_tokens != corrupt_tokens)[0].nonzero().flatten().tolist()
        where = pd.DataFrame({"layer": 0, "pos": [0, *differ[:3]]})  # an image patch, 3 instruction tokens
        result = patching.generic_activation_patch(
            bridge, corrupt_tokens, clean_cache, metric, patching.layer_pos_patch_setter, "resid_pre",
            index_df=where)
    assert "forward" not in vars(bridge) and not bridge.hook_dict["hook_embed"].fwd_hooks
    # an image patch is the same in both runs at layer 0 (the mask is bidirectional, so later
    # layers differ everywhere); instruction tokens that differ move the metric
    assert float(result[0]) == pytest.approx(0.0, abs=1e-5)
    assert result[1:].abs().max() > 1e-4
    with pytest.raises(InputError, match="takes no token ids"):
        with token_inputs(model, bridges[name, "expert"], obs, "expert"):
            pass
