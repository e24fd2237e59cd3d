"""TransformerLens bridges of OpenVLA's language model: parity with nnsight, shared weights, registration, hooks on predictions."""

import nnsight
import numpy as np
import pytest
import torch

from nnsight_vla import Clamp, InputError, SetupError, Site
from nnsight_vla.lens import project_value_vectors
from nnsight_vla.steering import hook_points
from nnsight_vla.transformer_lens import HookSteering, bridge_inputs, hooks, to_bridge

pytestmark = pytest.mark.xdist_group("transformer_lens")  # one worker builds the module's fixtures

NEURONS = [3, 17, 42]


@pytest.fixture(scope="module")
def bridge(tiny):
    return to_bridge(tiny)


def test_run_with_cache_equals_nnsight_at_every_site(tiny, bridge, obs):
    logits, cache = bridge.run_with_cache(**bridge_inputs(tiny, obs))
    order = ("attn_out", "neurons", "mlp_out", "resid")  # the order a layer computes them
    sites = [Site(layer, kind) for layer in range(tiny.spec.n_layers) for kind in order]
    with tiny.trace(obs):
        read = nnsight.save([])
        for site in sites:
            read.append(site.read(tiny).clone())
        head = tiny.lm_head.output.save()
    for site, value in zip(sites, read):
        torch.testing.assert_close(cache[site.hook_name], value, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits, head, rtol=0, atol=1e-5)
    pattern = cache["blocks.0.attn.hook_pattern"]
    assert pattern.shape[-1] == pattern.shape[-2] == logits.shape[1]
    torch.testing.assert_close(pattern.sum(-1), torch.ones_like(pattern.sum(-1)))


def test_the_bridge_shares_weights_and_leaves_the_model_alone(tiny, bridge, obs, tmp_path):
    ours = {t.data_ptr() for t in tiny._module.language_model.parameters()}
    added = {n: t for n, t in bridge.named_parameters() if t.data_ptr() not in ours}
    # no second copy of any weight: only TransformerLens's own zero unembedding bias is new
    assert list(added) == ["lm_head._original_component.bias"] and not added["lm_head._original_component.bias"].any()
    assert type(tiny._module.language_model.model.layers[0]).__name__ == "LlamaDecoderLayer"
    assert not any("_original_component" in k for k in tiny._module.state_dict())
    import nnsight_vla

    reloaded = nnsight_vla.load(tiny.save_pretrained(tmp_path / "after-bridge"))
    np.testing.assert_array_equal(reloaded.predict_action(obs), tiny.predict_action(obs))


def test_value_vectors_read_from_the_bridge_match_the_lens(tiny, bridge):
    table = project_value_vectors(tiny, top_k=5, progress=False)
    for layer in range(tiny.spec.n_layers):
        w_out = bridge.blocks[layer].mlp.W_out  # TransformerLens 3.5 keeps down_proj's [d_model, d_mlp]
        assert w_out.shape == (tiny.spec.d_model, tiny.spec.d_mlp)
        scores = w_out.T @ bridge.W_U  # [d_mlp, vocab]
        np.testing.assert_array_equal(scores.topk(5, dim=1).indices.numpy(), table.ids[layer])


def test_transformer_lens_hooks_steer_predictions_as_clamp_does(tiny, obs):
    def clamp(acts, hook):
        acts[..., NEURONS] = 6.0
        return acts

    calls = []

    def count(acts, hook):
        calls.append(hook.call)

    with hooks(tiny, [("blocks.1.mlp.hook_post", clamp), ("blocks.0.hook_resid_post", count)]):
        hooked = tiny.predict_action(obs)
    with tiny.steer(Clamp([(1, n) for n in NEURONS], 6.0)):
        steered = tiny.predict_action(obs)
    with tiny.predict_action(obs) as tracer:
        for step in tracer.iter[:7]:
            Clamp([(1, n) for n in NEURONS], 6.0).apply(tiny, step)
        traced = tracer.result.save()
    np.testing.assert_array_equal(hooked, steered)
    np.testing.assert_array_equal(hooked, np.asarray(traced))
    assert not np.array_equal(hooked, tiny.predict_action(obs)) and calls == list(range(7))


def test_steering_converts_to_bridge_hooks(tiny, bridge, obs):
    clamp = Clamp([(1, n) for n in NEURONS], 6.0, calls="prefill")
    logits = bridge.run_with_hooks(**bridge_inputs(tiny, obs), fwd_hooks=hook_points(tiny, clamp))
    with tiny.trace(obs):
        clamp.apply(tiny, 0)
        head = tiny.lm_head.output.save()
    torch.testing.assert_close(logits, head, rtol=0, atol=1e-5)


def test_the_entry_point_is_what_registers_the_adapter(tiny, monkeypatch):
    from transformer_lens.factories import architecture_adapter_factory as factory

    cls = factory.ArchitectureAdapterFactory
    monkeypatch.setattr(cls, "_adapters", dict(factory.SUPPORTED_ARCHITECTURES))
    monkeypatch.setattr(cls, "_entry_points_discovered", False)
    monkeypatch.setattr(factory, "entry_points", lambda group: [])
    with pytest.raises(SetupError, match="no TransformerLens adapter is registered as 'OpenVLAForActionPrediction'"):
        to_bridge(tiny)
    monkeypatch.undo()
    assert "OpenVLAForActionPrediction" not in factory.SUPPORTED_ARCHITECTURES  # not a built-in name
    monkeypatch.setattr(cls, "_adapters", dict(factory.SUPPORTED_ARCHITECTURES))
    monkeypatch.setattr(cls, "_entry_points_discovered", False)  # the real entry points again
    to_bridge(tiny)
    assert cls._adapters["OpenVLAForActionPrediction"].__module__ == "nnsight_vla_openvla.tl_adapter"


def test_bad_inputs(tiny, obs):
    with pytest.raises(InputError, match="no TransformerLens part 'expert'"):
        to_bridge(tiny, part="expert")
    with pytest.raises(InputError, match="camera"):
        from nnsight_vla import Observation

        bridge_inputs(tiny, Observation({"wrist": obs.images["image"]}, "go"))
    with pytest.raises(InputError, match="is not one of the hook points"):
        from nnsight_vla import Site

        Site.parse("blocks.1.hook_resid_mid")
    with pytest.raises(InputError, match="two hooks on"):
        with hooks(tiny, [("blocks.1.mlp.hook_post", print), ("blocks.1.mlp.hook_post", print)]):
            pass


def test_compatibility_mode_folds_without_touching_the_model(tiny, obs):
    before = {k: v.clone() for k, v in tiny._module.state_dict().items()}
    action = tiny.predict_action(obs)
    folded = to_bridge(tiny, compatibility=True)
    inputs = bridge_inputs(tiny, obs)
    logits, cache = folded.run_with_cache(**inputs)
    with tiny.trace(obs):
        head = tiny.lm_head.output.save()
    torch.testing.assert_close(logits.log_softmax(-1), head.log_softmax(-1), rtol=0, atol=1e-4)
    resid = cache.accumulated_resid(apply_ln=True)  # [layers + 1, batch, pos, d_model]
    torch.testing.assert_close(resid[-1] @ folded.W_U + folded.b_U, logits, rtol=0, atol=1e-4)
    # the embeddings come in as inputs (hook_embed does not fire): attention and MLP outputs
    # of every layer, added to the first residual, give the last one
    parts = cache.decompose_resid()
    assert parts.shape[0] == 2 * tiny.spec.n_layers
    last = cache[f"blocks.{tiny.spec.n_layers - 1}.hook_resid_post"]
    torch.testing.assert_close(parts.sum(0) + cache["blocks.0.hook_resid_pre"], last, rtol=0, atol=1e-4)
    assert all(torch.equal(v, before[k]) for k, v in tiny._module.state_dict().items())
    np.testing.assert_array_equal(tiny.predict_action(obs), action)


@pytest.mark.slow
def test_token_inputs_run_transformer_lens_patching_between_two_instructions(tiny, bridge, obs):
    import transformer_lens.patching as patching

    from nnsight_vla import Observation
    from nnsight_vla.transformer_lens import token_inputs

    corrupt = Observation(obs.images["image"], "pick up the white bowl")  # same image, same length
    with token_inputs(tiny, bridge, obs) as clean_tokens:
        clean_logits, clean_cache = bridge.run_with_cache(clean_tokens)
        with tiny.trace(obs):
            head = tiny.lm_head.output.save()
        torch.testing.assert_close(clean_logits, head, rtol=0, atol=1e-5)  # the image is in
        with token_inputs(tiny, bridge, corrupt) as corrupt_tokens:
            assert len(bridge.hook_dict["hook_embed"].fwd_hooks) == 2
        assert len(bridge.hook_dict["hook_embed"].fwd_hooks) == 1  # the inner block removed its own only
        assert corrupt_tokens.shape == clean_tokens.shape and not torch.equal(corrupt_tokens, clean_tokens)
        corrupt_logits = bridge(corrupt_tokens)
        target = int(clean_logits[0, -1].argmax())

        def metric(logits):
            return logits[0, -1, target] - corrupt_logits[0, -1, target]

        result = patching.get_act_patch_resid_pre(bridge, corrupt_tokens, clean_cache, metric)
    assert result.shape == (tiny.spec.n_layers, clean_tokens.shape[1])
    # patching the whole clean residual at layer 0 at every differing position restores the clean run;
    # patching one position that both prompts share (an image patch) changes nothing
    differ = (clean_tokens != corrupt_tokens)[0].nonzero().flatten().tolist()
    assert differ and float(result[0, 5]) == pytest.approx(0.0, abs=1e-5)
    assert float(result[0, differ[0]]) != pytest.approx(0.0, abs=1e-5)
    assert not bridge.hook_dict["hook_embed"].fwd_hooks  # the patch writer is gone


@pytest.mark.slow
def test_in_place_hooks_and_libero_evaluation_with_hook_functions(tiny, obs):
    from nnsight_vla.eval import evaluate

    def clamp_in_place(acts, hook):  # TransformerLens style: change in place, return None
        acts[..., NEURONS] = 6.0

    clamp = Clamp([(1, n) for n in NEURONS], 6.0)
    with hooks(tiny, [("blocks.1.mlp.hook_post", clamp_in_place)]):
        hooked = tiny.predict_action(obs)
    with tiny.steer(clamp):
        np.testing.assert_array_equal(hooked, tiny.predict_action(obs))
    steering = HookSteering([("blocks.1.mlp.hook_post", clamp_in_place)])
    with pytest.raises(InputError, match="no random control"):
        evaluate(tiny, "libero_spatial", 0, 1, steering=steering, max_steps=2, camera_size=64)
    by_hooks = evaluate(tiny, "libero_spatial", 0, 1, steering=steering, controls=(), max_steps=2, camera_size=64)
    by_clamp = evaluate(tiny, "libero_spatial", 0, 1, steering=clamp, controls=(), max_steps=2, camera_size=64)
    assert [r["condition"] for r in by_hooks.episodes] == ["steered"]
    np.testing.assert_array_equal(by_hooks.episodes[0]["actions"], by_clamp.episodes[0]["actions"])
    np.testing.assert_array_equal(by_hooks.episodes[0]["path"], by_clamp.episodes[0]["path"])


def test_hook_functions_must_come_as_a_list_of_pairs():
    def fn(acts, hook):
        return acts

    with pytest.raises(InputError, match=r"one \(hook_name, fn\) pair; pass a list of them: \[\('blocks.1.mlp.hook_post', fn\)\]"):
        HookSteering(("blocks.1.mlp.hook_post", fn))
    with pytest.raises(InputError, match=r"must be \(hook_name, fn\) pairs.*got \('blocks.1.mlp.hook_post',\)"):
        HookSteering([("blocks.1.mlp.hook_post",)])

