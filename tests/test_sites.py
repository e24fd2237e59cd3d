"""Sites and the activation collector on tiny-openvla, against nnsight traces and call counts."""

import nnsight
import pytest
import torch

from nnsight_vla import InputError, LayerIndexError, Site, collect
from nnsight_vla.sites import KINDS, expand_sites, hooked


def test_names_and_hook_names(tiny):
    assert Site.parse("vlm.1.neurons") == Site(1, "neurons") == Site.parse("1.neurons")
    assert [Site(1, k).hook_name for k in ("neurons", "resid", "mlp_out", "attn_out")] == [
        "blocks.1.mlp.hook_post", "blocks.1.hook_resid_post", "blocks.1.hook_mlp_out", "blocks.1.hook_attn_out"]
    assert Site(-1, "neurons").on(tiny) == Site(1, "neurons")
    assert (Site(1, "neurons").width(tiny), Site(1, "resid").width(tiny)) == (256, 64)
    assert Site(1, "neurons").module(tiny) is tiny._module.language_model.model.layers[1].mlp.down_proj
    with pytest.raises(LayerIndexError, match="layer 2 is out of range: tower 'vlm' has 2 layers"):
        Site(2, "resid").on(tiny)
    with pytest.raises(InputError, match="kind 'hidden' is not one of"):
        Site(0, "hidden")
    with pytest.raises(InputError, match="no tower 'expert'"):
        Site(0, "resid", "expert").on(tiny)
    with pytest.raises(InputError, match="TOWER.LAYER.KIND"):
        Site.parse("resid")


@pytest.mark.parametrize("site", [Site(layer, kind, tower) for layer in (0, 3, -1) for kind in KINDS
                                  for tower in ("vlm", "expert")])
def test_one_spelling_round_trips(site):
    assert Site.parse(str(site)) == site
    if site.layer >= 0:  # a hook name holds the layer and kind; the tower is the bridge's
        assert Site.parse(site.hook_name, tower=site.tower) == site
    if site.tower == "vlm":
        assert Site.parse(f"{site.layer}.{site.kind}") == site


def test_every_accepted_spelling_and_the_range_form(tiny):
    assert Site.parse("blocks.12.mlp.hook_post") == Site(12, "neurons")
    assert Site.parse("blocks.2.hook_attn_out", tower="expert") == Site(2, "attn_out", "expert")
    assert Site.parse("4.mlp_out", tower="expert") == Site(4, "mlp_out", "expert")
    with pytest.raises(InputError, match="is not one of the hook points a prediction runs"):
        Site.parse("blocks.1.hook_resid_mid")
    assert expand_sites("resid:all", tiny) == [Site(0), Site(1)]
    assert expand_sites("neurons@vlm:1", tiny) == [Site(1, "neurons")]
    assert expand_sites("attn_out:0-1", tiny) == expand_sites("attn_out:0,1", tiny) == [Site(0, "attn_out"), Site(1, "attn_out")]
    for spec, message in [("resid", "KIND\\[@TOWER\\]:LAYERS"), ("hidden:all", "KIND: neurons, resid"),
                          ("resid@expert:0", "has towers \\['vlm'\\], not 'expert'"), ("resid:x", "LAYERS is"),
                          ("resid:5", "layer 5 is out of range")]:
        with pytest.raises((InputError, LayerIndexError), match=message):
            expand_sites(spec, tiny)


@pytest.mark.parametrize("kind", ["neurons", "resid", "mlp_out", "attn_out"])
def test_collect_equals_the_trace_on_every_decoding_call(tiny, obs, kind):
    site = Site(1, kind)
    with tiny.predict_action(obs) as tracer:
        seen = nnsight.save([])
        for step in tracer.iter[:7]:
            seen.append(site.read(tiny)[:, -1].clone())
    acts = collect(tiny, obs, site, calls="actions", positions="last")[site]
    assert acts.shape == (1, 7, 1, site.width(tiny))
    torch.testing.assert_close(acts[:, :, 0], torch.stack(list(seen), dim=1), rtol=0, atol=0)


def test_positions_and_batches(tiny, obs, obs_long):
    site = Site(0, "resid")
    with tiny.trace(obs):
        full = site.read(tiny).save()
    got = collect(tiny, obs, site, calls="prefill", positions="all")[site]
    torch.testing.assert_close(got[0, 0], full[0], rtol=0, atol=0)
    torch.testing.assert_close(collect(tiny, obs, site, calls="prefill", positions="mean")[site][0, 0, 0], full[0].mean(0))
    torch.testing.assert_close(collect(tiny, obs, site, calls=[0], positions=[2, -1])[site][0, 0], full[0, [2, -1]])
    both = collect(tiny, [obs, obs_long], site, calls="actions", positions="last", batch_size=2)[site]
    alone = collect(tiny, [obs, obs_long], site, calls="actions", positions="last")[site]
    torch.testing.assert_close(both, alone, atol=1e-5, rtol=0)


def test_a_prediction_stops_once_every_wanted_call_was_seen(tiny, obs):
    forwards = []
    handle = tiny._module.language_model.register_forward_pre_hook(lambda *a: forwards.append(1))
    try:
        collect(tiny, obs, Site(0, "resid"), calls=[1], positions="last")
        assert len(forwards) == 2  # the prefill and the first decoding step, not all seven
        forwards.clear()
        collect(tiny, obs, Site(0, "resid"), positions="last")
        assert len(forwards) == 7
    finally:
        handle.remove()


def test_hooked_counts_calls_per_prediction_and_removes_its_hooks(tiny, obs):
    calls = []
    module = Site(1, "neurons").module(tiny)
    with hooked(tiny, {Site(1, "neurons"): lambda x, call: calls.append(call)}):
        tiny.predict_action(obs)
        tiny.predict_action(obs)
    assert calls == [0, 1, 2, 3, 4, 5, 6] * 2
    assert not module._forward_pre_hooks


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(calls=[99]), r"calls \[99\] never ran; a prediction ran it 7 time"),
        (dict(calls="sometimes"), "calls='sometimes' is not one of"),
        (dict(positions="first"), "positions='first' is not one of"),
        (dict(positions=[500], calls="prefill"), "positions \\[500\\] are out of range"),
        (dict(positions="all", batch_size=2), "only positions counted from the end"),
        (dict(batch_size=0), "batch_size=0 must be a positive int"),
        (dict(positions="all"), "different lengths"),
    ],
)
def test_bad_collections(tiny, obs, kwargs, message):
    with pytest.raises(InputError, match=message):
        collect(tiny, [obs, obs], Site(0, "resid"), **kwargs)


def test_bad_sites_and_observations(tiny, obs):
    with pytest.raises(InputError, match="each of sites must be an nnsight_vla.Site or its text .*got 3"):
        collect(tiny, obs, [3])
    with pytest.raises(InputError, match="sites is empty"):
        collect(tiny, obs, [])
    with pytest.raises(InputError, match="site 'resid' is not TOWER.LAYER.KIND"):
        collect(tiny, obs, "resid")
    with pytest.raises(InputError, match="observations is empty"):
        collect(tiny, [], Site(0, "resid"))


def test_collect_defaults_work_on_openvla_and_sites_are_found_as_asked(tiny, obs):
    """The defaults are the action calls at the last position; a negative layer or a site's
    text finds the normalised key."""
    acts = collect(tiny, obs, [Site(-1, "resid"), "vlm.0.neurons"])
    n = tiny.towers()["vlm"].n_layers
    assert set(acts) == {Site(n - 1, "resid"), Site(0, "neurons")}
    explicit = collect(tiny, obs, Site(n - 1, "resid"), calls="actions", positions="last")[Site(n - 1, "resid")]
    assert explicit.shape == (1, 7, 1, tiny.towers()["vlm"].d_model)
    for key in (Site(-1, "resid"), f"vlm.{n - 1}.resid", "-1.resid", Site(n - 1, "resid")):
        assert key in acts
        assert torch.equal(acts[key], explicit)
    assert Site(-2, "resid") not in acts and acts.get(Site(-2, "resid")) is None
    with pytest.raises(KeyError, match="was not collected; the sites are"):
        acts[Site(-2, "resid")]


def test_all_positions_of_prompts_of_different_lengths_are_refused(tiny, obs, obs_long):
    with pytest.raises(InputError, match="different shapes .*prompts of different lengths"):
        collect(tiny, [obs, obs_long], Site(0, "resid"), calls="prefill", positions="all")
