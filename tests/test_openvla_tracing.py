"""tiny-openvla under nnsight: standard names, batching, predict_action, steering, nnsight features."""

from dataclasses import replace

import nnsight
import numpy as np
import pytest
import torch

import nnsight_vla
from nnsight_vla import InputError, LayerIndexError, StandardNameError
from nnsight_vla_openvla.model import OpenVLA

LAYER, NEURONS, VALUE = 1, [3, 17, 42, 200], 6.0


def test_standard_names_alias_the_original_modules(tiny):
    net = tiny._module
    assert tiny.vision._module is net.vision_backbone
    assert tiny.projector._module is net.projector
    assert tiny.ln_final._module is net.language_model.model.norm
    assert tiny.lm_head._module is net.language_model.lm_head
    assert len(tiny.layers) == tiny.spec.n_layers == 2
    for i in range(tiny.spec.n_layers):
        layer = net.language_model.model.layers[i]
        assert tiny.layers[i]._module is layer
        assert tiny.layers[i].mlp.down_proj._module is layer.mlp.down_proj
        # original paths keep working, and name the same envoy
        assert tiny.language_model.model.layers[i] is tiny.layers[i]
    assert tiny.layers[-1] is tiny.layers[1]


def test_spec(tiny):
    spec = tiny.spec
    # 1280 base tokens (a multiple of 64, like Llama-2's 32000), <PAD>, padded to 1344 = 1280 + 64
    assert (spec.d_model, spec.d_mlp, spec.vocab_size, spec.action_dim) == (64, 256, 1344, 7)
    pad = tiny.tokenizer.pad_token_id
    assert pad == 1280 and len(tiny.tokenizer) == 1281
    assert spec.action_token_ids == range(pad - 256, pad) == range(1024, 1280)
    assert spec.vocab_size % 64 == 0 and spec.vocab_size > pad


def test_layer_index_out_of_range(tiny):
    with pytest.raises(LayerIndexError, match="layer 2 is out of range.*2 layers") as info:
        tiny.layers[2]
    assert isinstance(info.value, IndexError)
    with pytest.raises(LayerIndexError):
        tiny.layers[-3]


def test_layout_is_checked_at_load():
    vlm = OpenVLA.layout.towers[0]

    class Broken(OpenVLA):
        layout = replace(OpenVLA.layout, towers=(replace(vlm, unembed=None),))

    with pytest.raises(StandardNameError, match=r"standard name\(s\) \['lm_head'\]"):
        Broken("tiny-openvla")

    class Misplaced(OpenVLA):
        layout = replace(OpenVLA.layout, towers=(replace(vlm, layers="vision_backbone.featurizer.blocks"),))

    with pytest.raises(StandardNameError, match="featurizer.blocks.0.input_layernorm"):
        Misplaced("tiny-openvla")

    class Resized(OpenVLA):
        def _configure(self, source, **options):
            super()._configure(source, **options)
            self.spec = replace(self.spec, n_layers=3)

    with pytest.raises(StandardNameError, match=r"disagree on \{'n_layers': \(3, 2\)\}"):
        Resized("tiny-openvla")


def test_wrong_input_type(tiny):
    with pytest.raises(InputError, match="expected an nnsight_vla.Observation"):
        tiny.predict_action("pick up the bowl")


def test_invokes_of_different_lengths_batch_into_one_forward(tiny, obs, obs_long):
    calls = []
    hook = tiny._module.register_forward_pre_hook(
        lambda m, a, k: calls.append(k["input_ids"].shape), with_kwargs=True
    )
    try:
        with tiny.trace() as tracer:
            with tracer.invoke(obs):
                acts_short = tiny.layers[1].mlp.down_proj.input[:, -1].save()
                short = tiny.lm_head.output[:, -1].save()
            with tracer.invoke(obs_long):
                long = tiny.lm_head.output[:, -1].save()
    finally:
        hook.remove()
    assert len(calls) == 1 and calls[0][0] == 2  # one forward, two rows
    with tiny.trace(obs):
        alone_acts = tiny.layers[1].mlp.down_proj.input[:, -1].save()
        alone_short = tiny.lm_head.output[:, -1].save()
    with tiny.trace(obs_long):
        alone_long = tiny.lm_head.output[:, -1].save()
    torch.testing.assert_close(short, alone_short, rtol=0, atol=1e-5)
    torch.testing.assert_close(acts_short, alone_acts, rtol=0, atol=1e-5)
    torch.testing.assert_close(long, alone_long, rtol=0, atol=1e-5)
    both = tiny.predict_action([obs, obs_long])
    np.testing.assert_array_equal(both, np.stack([tiny.predict_action(obs), tiny.predict_action(obs_long)]))


def test_predict_action_plain_and_traced_agree(tiny, obs):
    plain = tiny.predict_action(obs)
    assert plain.shape == (7,) and plain.dtype == np.float64
    with tiny.predict_action(obs) as tracer:
        steps = nnsight.save([])
        for step in tracer.iter[:]:
            steps.append(tiny.layers[0].output.shape)
    assert len(steps) == 7  # prefill + 6 cached decoding steps, one per action token
    with tiny.predict_action(obs) as tracer:
        traced = tracer.result.save()
    np.testing.assert_array_equal(traced, plain)


def _reference_hook(model):
    """The paper's rule as a plain torch forward-pre-hook: overwrite the FFN activations."""

    def hook(module, args):
        (x,) = args
        x = x.clone()
        x[..., NEURONS] = VALUE
        return (x,)

    return model._module.language_model.model.layers[LAYER].mlp.down_proj.register_forward_pre_hook(hook)


def test_nnsight_steering_equals_a_torch_hook(tiny, obs):
    baseline = tiny.predict_action(obs)
    with tiny.predict_action(obs) as tracer:
        for step in tracer.iter[:7]:
            tiny.layers[LAYER].mlp.down_proj.input[..., NEURONS] = VALUE
        steered = tracer.result.save()
    handle = _reference_hook(tiny)
    try:
        reference = tiny.predict_action(obs)
    finally:
        handle.remove()
    np.testing.assert_array_equal(steered, reference)
    assert not np.array_equal(steered, baseline)  # the edit did something
    np.testing.assert_array_equal(tiny.predict_action(obs), baseline)  # and left nothing behind

    with tiny.trace(obs):
        tiny.layers[LAYER].mlp.down_proj.input[..., NEURONS] = VALUE
        logits = tiny.lm_head.output.save()
    handle = _reference_hook(tiny)
    try:
        with torch.no_grad():
            reference_logits = tiny._module(**tiny._inputs([obs])).logits
    finally:
        handle.remove()
    assert torch.equal(logits, reference_logits)


def test_edit_session_cache_source_scan_remote(tiny, obs):
    baseline = tiny.predict_action(obs)
    with tiny.edit() as (tracer, edited):
        edited.layers[LAYER].mlp.down_proj.input[..., NEURONS] = VALUE
    assert not np.array_equal(edited.predict_action(obs), baseline)
    np.testing.assert_array_equal(tiny.predict_action(obs), baseline)

    with tiny.session():
        with tiny.trace(obs):
            clean = tiny.layers[0].output
        with tiny.trace(obs):
            tiny.layers[0].output[:] = clean * 0
            zeroed = tiny.lm_head.output.save()
    assert zeroed.shape[-1] == tiny.spec.vocab_size

    with tiny.trace(obs) as tracer:
        cache = tracer.cache(modules=[tiny.layers[0].mlp])
    assert cache["model.language_model.model.layers.0.mlp"].output.shape[-1] == tiny.spec.d_model

    with tiny.trace(obs):
        via_source = tiny.layers[0].mlp.source.self_down_proj_0.input.save()
        via_module = tiny.layers[0].mlp.down_proj.input.save()
    assert torch.equal(via_source, via_module)

    lazy = nnsight_vla.load("tiny-openvla", dispatch=False)
    with lazy.scan(obs):
        shape = nnsight.save(lazy.layers[1].mlp.down_proj.input.shape)
    assert not lazy.dispatched and tuple(shape)[-1] == tiny.spec.d_mlp

    with tiny.trace(obs, remote="local"):
        remote = tiny.lm_head.output.save()
    with tiny.trace(obs):
        local = tiny.lm_head.output.save()
    torch.testing.assert_close(remote, local)
    assert tiny.to_model_key() == 'nnsight_vla_openvla.model.OpenVLA:{"dtype": null, "revision": null, "source": "tiny-openvla"}'


def test_model_key_round_trip(tiny, obs):
    rebuilt = OpenVLA.from_model_key(tiny.to_model_key(), dispatch=True)
    np.testing.assert_array_equal(rebuilt.predict_action(obs), tiny.predict_action(obs))
