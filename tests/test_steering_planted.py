"""Planted truth: a neuron whose value vector writes a high action bin steers that action up;
its random control does not; the lens finds it."""

import numpy as np
import pytest
import torch

import nnsight_vla
from nnsight_vla import Clamp, NeuronCluster, lens

pytestmark = pytest.mark.xdist_group("steering_planted")  # one worker builds the module's fixtures

LAYER, NEURON, DIM, VALUE = 1, 100, 2, 0.2


@pytest.fixture(scope="module")
def planted():
    """tiny-openvla with neuron (1, 100) silent (zero input weights) and its value vector a
    large multiple of the unembedding row of the action token for +0.98."""
    model = nnsight_vla.load("tiny-openvla")
    high = int(model.action_tokenizer.encode(np.array([0.98]))[0])
    mlp = model.layers[LAYER].mlp
    with torch.no_grad():
        row = model.lm_head.weight[high]
        mlp.down_proj.weight[:, NEURON] = 250.0 * row / row.norm()
        mlp.gate_proj.weight[NEURON] = 0.0
        mlp.up_proj.weight[NEURON] = 0.0
    return model, high


def test_clamping_the_planted_neuron_moves_its_action_dimension_up(planted, obs):
    model, high = planted
    base = model.predict_action(obs)
    cluster = NeuronCluster([(LAYER, NEURON)], name="planted", d_mlp=model.spec.d_mlp)
    # the third forward call emits the token of action dimension 2; steer only its last position
    only_dim = Clamp(cluster, VALUE, calls=[DIM], positions="last")
    with model.steer(only_dim):
        steered = model.predict_action(obs)
    stats = model.config.norm_stats["tiny_robot"]["action"]
    top = model.decode_actions(np.array([[high] * 7]))[0]
    # unsteered, tiny-openvla (1344-token vocabulary) puts this dimension at 0.44: 0.44 below the top
    assert steered[DIM] == pytest.approx(top[DIM]) and steered[DIM] > base[DIM] + 0.4
    assert top[DIM] > stats["q99"][DIM] - 0.05  # the top of the dataset's range
    np.testing.assert_array_equal(steered[:DIM], base[:DIM])  # earlier tokens are untouched

    # the random control: same size, same layer counts, other neurons — same clamp
    changes = []
    for seed in range(10):
        control = cluster.random_like(seed)
        assert len(control) == 1 and control.by_layer().keys() == {LAYER} and (LAYER, NEURON) not in control
        with model.steer(Clamp(control, VALUE, calls=[DIM], positions="last")):
            changes.append(np.abs(model.predict_action(obs) - base).max())
    # tolerance: at most one control in ten may flip a token at all, by less than a fifth of
    # the planted effect
    assert sum(c > 0 for c in changes) <= 1 and max(changes) < 0.2 * (steered[DIM] - base[DIM])


def test_the_lens_finds_the_planted_neuron(planted):
    model, high = planted
    table = lens.project_value_vectors(model, top_k=5, layers=[LAYER])
    assert table.top_ids(LAYER, NEURON)[0] == high
    label = model.token_strings([high])[0]
    found = table.find(label)
    assert (LAYER, NEURON) in found
