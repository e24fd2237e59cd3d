"""OpenVLA's action tokens and un-normalisation against hand-computed values."""

import json
import shutil

import nnsight
import numpy as np
import pytest

import nnsight_vla
from nnsight_vla import InputError
from nnsight_vla_openvla.actions import ActionTokenizer, select_stats, unnormalize

pytestmark = pytest.mark.xdist_group("openvla_actions")  # one worker builds the module's fixtures


def test_every_bin_round_trips():
    tok = ActionTokenizer(32000)
    assert tok.token_ids == range(31744, 32000)
    centers = tok.bin_centers
    assert len(centers) == 255
    assert centers[0] == pytest.approx(-1 + 1 / 255) and centers[-1] == pytest.approx(1 - 1 / 255)
    ids = tok.encode(centers)
    assert set(ids) <= set(tok.token_ids)
    np.testing.assert_array_equal(tok.decode(ids), centers)
    # hand-computed: a = 0 falls in bin 128 -> id 32000 - 128; decodes to centre 127 (0.0)
    assert tok.encode(np.array([0.0]))[0] == 31872
    assert tok.decode(np.array([31872]))[0] == pytest.approx(0.0, abs=1e-12)
    # the extremes clip into the edge bins
    assert tok.encode(np.array([-5.0, 5.0])).tolist() == [31999, 31744]
    np.testing.assert_allclose(tok.decode(np.array([31999, 31744])), [centers[0], centers[-1]])


def test_unnormalize_by_hand():
    stats = {"q01": [-1.0, 0.0, 2.0], "q99": [1.0, 4.0, 4.0], "mask": [True, True, False]}
    got = unnormalize(np.array([0.5, -1.0, 0.25]), stats)
    np.testing.assert_allclose(got, [0.5, 0.0, 0.25])  # 0.5*(1.5)*2-1, 0*4+0, masked
    no_mask = unnormalize(np.array([1.0, 1.0, 1.0]), {k: stats[k] for k in ("q01", "q99")})
    np.testing.assert_allclose(no_mask, [1.0, 4.0, 4.0])


def test_select_stats():
    stats = {"a": {"action": {"q01": [0]}}, "b": {"action": {"q01": [1]}}}
    assert select_stats(stats, "b") == ("b", {"q01": [1]})
    with pytest.raises(InputError, match=r"2 datasets; pass unnorm_key= one of \['a', 'b'\]"):
        select_stats(stats, None)
    with pytest.raises(InputError, match=r"'c' is not in this checkpoint; use one of \['a', 'b'\]"):
        select_stats(stats, "c")


@pytest.fixture(scope="module")
def two_datasets(saved_tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("two") / "ckpt"
    shutil.copytree(saved_tiny, folder)
    config = json.loads((folder / "config.json").read_text())
    stats = config["norm_stats"]["tiny_robot"]
    doubled = json.loads(json.dumps(stats))
    doubled["action"]["q99"] = [2 * q for q in stats["action"]["q99"]]
    config["norm_stats"]["other_robot"] = doubled
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_unnorm_key_with_several_datasets(two_datasets, obs):
    model = nnsight_vla.load(two_datasets)  # loading works: the key is needed for actions
    with pytest.raises(InputError, match=r"pass unnorm_key= one of \['other_robot', 'tiny_robot'\]"):
        model.predict_action(obs)
    a = model.predict_action(obs, unnorm_key="tiny_robot")
    b = nnsight_vla.load(two_datasets, unnorm_key="other_robot").predict_action(obs)
    assert not np.allclose(a[:6], b[:6]) and a[6] == b[6]  # gripper is unmasked: passes through
    with pytest.raises(InputError, match="'nope' is not in this checkpoint"):
        nnsight_vla.load(two_datasets, unnorm_key="nope")


def test_predicted_actions_are_decoded_tokens(tiny, obs):
    """predict_action == decode(the 7 greedy tokens) — read from the trace."""
    with tiny.predict_action(obs) as tracer:
        ids = nnsight.save([])
        for step in tracer.iter[:7]:
            ids.append(tiny.lm_head.output[:, -1].argmax(-1).save())
        action = tracer.result.save()
    ids = np.array([int(i) for i in ids])[None]
    assert set(ids[0]) <= set(tiny.spec.action_token_ids)
    np.testing.assert_allclose(action, tiny.decode_actions(ids)[0])


def test_token_strings_label_action_tokens(tiny):
    ids = [tiny.tokenizer.convert_tokens_to_ids("▁up"), tiny.spec.action_token_ids[0], tiny.spec.action_token_ids[-1]]
    assert tiny.token_strings(ids) == ["▁up", "[action: 0.996]", "[action: -0.996]"]


def test_action_bins_invert_decoding(tiny):
    """The bin of each decoded action is the bin its token came from (probe targets)."""
    tok = tiny.action_tokenizer
    bins = np.random.default_rng(0).integers(0, tok.n_bins - 1, (50, tiny.spec.action_dim))
    actions = tiny.decode_actions(tok.vocab_size - 1 - bins)
    np.testing.assert_array_equal(tiny.action_bins(actions), bins)
