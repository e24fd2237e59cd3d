"""Logit lens on tiny-openvla against the model's own logits and torch hooks; the lens CLI."""

import nnsight
import numpy as np
import pytest
import torch
import yaml

from nnsight_vla import InputError, LayerIndexError
from nnsight_vla.cli import main
from nnsight_vla.lens import ValueVectorTable, logit_lens


def test_last_layer_equals_the_logits_of_every_action_step(tiny, obs):
    lens = logit_lens(tiny, obs)
    assert lens.rows == [f"action {i}" for i in range(7)] and lens.layers == (0, 1)
    with tiny.predict_action(obs) as tracer:
        logits = nnsight.save([])
        for step in tracer.iter[:7]:
            logits.append(tiny.lm_head.output[0, -1].save())
        action = tracer.result.save()
    torch.testing.assert_close(lens.logits[:, -1], torch.stack(list(logits)), rtol=1e-5, atol=1e-5)
    # the last layer's likeliest action bin per dimension decodes to the predicted action
    dist = lens.action_distribution()
    assert dist.shape == (7, 2, 256) and np.allclose(dist.sum(-1), 1.0, atol=1e-5)
    ids = np.array(tiny.spec.action_token_ids)[dist[:, -1].argmax(-1)]
    np.testing.assert_allclose(tiny.decode_actions(ids[None])[0], action)


@pytest.mark.parametrize("norm", [True, False])
def test_positions_equal_torch_hooks(tiny, obs, norm):
    outputs = []
    net_layers = tiny._module.language_model.model.layers
    handles = [
        layer.register_forward_hook(lambda m, a, out: outputs.append(out)) for layer in net_layers
    ]
    try:
        with torch.no_grad():
            tiny._module(**tiny._inputs([obs]))
    finally:
        for handle in handles:
            handle.remove()
    positions = [0, 5, -1]
    lens = logit_lens(tiny, obs, positions=positions, norm=norm)
    assert lens.rows == ["position 0", "position 5", "position -1"]
    unembed = tiny.lm_head._module.weight.detach()
    for i, out in enumerate(outputs):
        h = out[0, positions]
        h = tiny.ln_final._module(h) if norm else h
        torch.testing.assert_close(lens.logits[:, i], h @ unembed.T, rtol=1e-5, atol=1e-5)
    top = lens.top_tokens(1, row=2, k=3)
    assert len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1]
    assert top[0][0] == tiny.token_strings([int(lens.logits[2, 1].argmax())])[0]


def test_report_plot_and_errors(tiny, obs, tmp_path):
    lens = logit_lens(tiny, obs, layers=[1])
    assert lens.layers == (1,) and lens.logits.shape == (7, 1, tiny.spec.vocab_size)
    text = lens.describe(k=2)
    assert text.splitlines()[0] == "action 0:" and "| [action: " in text.splitlines()[1]
    assert lens.plot(tmp_path / "lens.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(InputError, match="out of range: this observation's sequence has"):
        logit_lens(tiny, obs, positions=[10_000])
    with pytest.raises(LayerIndexError, match="layer 3 is out of range"):
        logit_lens(tiny, obs, layers=[3])
    with pytest.raises(InputError, match="one nnsight_vla.Observation"):
        logit_lens(tiny, "pick up the bowl")
    with pytest.raises(InputError, match="layer 0 was not read"):
        lens.top_tokens(0)


def test_cli_lens_and_clusters(tmp_path, capsys):
    out = tmp_path / "lens"
    assert (
        main(
            [
                "lens",
                "tiny-openvla",
                "--top-k",
                "5",
                "--layers",
                "1",
                "--no-norm",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "rewired.png",
        "top_tokens.txt",
        "value_vectors.json",
        "value_vectors.npz",
    ]
    table = ValueVectorTable.load(out)
    assert table.layers == (1,) and table.top_k == 5 and table.info["norm"] is False
    assert (out / "top_tokens.txt").read_text().splitlines()[0].startswith("[1.0] ")
    dictionary = tmp_path / "dictionaries.yaml"
    # random tiny-openvla: no neuron lists "up" among its top 5 tokens, so the cluster is refused ...
    assert not table.find("up")
    assert main(["clusters", str(out), "--concept", "up", "--size", "4", "--out", str(dictionary)]) == 2
    assert "no value vector in this table lists 'up'" in capsys.readouterr().err
    assert not dictionary.exists()
    # ... unless asked for explicitly; the first printed line says what matched
    assert main(["clusters", str(out), "--concept", "up", "--size", "4", "--allow-unmatched",
                 "--out", str(dictionary)]) == 0
    flat = list(yaml.safe_load(dictionary.read_text())["up_4"])
    assert len(flat) == 4 and all(256 <= i < 512 for i in flat)  # layer 1 only
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == (
        "up_4: the 4 value vectors nearest to 'up' (tokens ▁up, up); 0 of them list it among their "
        "top 5 tokens (0 in the table); none does: allow_unmatched=True took the nearest anyway"
    )
    assert "wrote 'up_4' (4 neurons)" in printed[-1]
    assert main(["clusters", str(out), "--concept", "xyzzyq", "--out", str(dictionary)]) == 2
    assert "no token of this vocabulary matches 'xyzzyq'" in capsys.readouterr().err
    assert main(["clusters", str(tmp_path), "--concept", "up", "--out", str(dictionary)]) == 2
    assert "is not a saved value-vector table" in capsys.readouterr().err
