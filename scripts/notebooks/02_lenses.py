"""The lenses: value vectors and the logit lens onto the vocabulary."""

from nbformat.v4 import new_code_cell, new_markdown_cell

CELLS = [
    new_markdown_cell(
        "# Vocabulary-projection lenses\n\n"
        "Project every FFN value vector (a column of `down_proj`) onto the vocabulary, search "
        "neurons by token, group them into concept clusters, measure how many are rewired for "
        "actions, and read the residual stream layer by layer (logit lens). This runs on the "
        "built-in `tiny-openvla` (random weights), with one neuron planted so there is something "
        "to find. `nnsight_vla.load(\"smol-openvla\")` (SmolLM2-135M, offline) gives real "
        "semantic neurons; `\"openvla/openvla-7b-finetuned-libero-10\"` the paper's model."
    ),
    new_code_cell(
        "import tempfile\n"
        "from pathlib import Path\n\n"
        "import numpy as np\n"
        "import torch\n"
        "from IPython.display import Image\n\n"
        "import nnsight_vla\n"
        "from nnsight_vla import NeuronCluster, Observation, lens\n\n"
        "model = nnsight_vla.load(\"tiny-openvla\")\n"
        "out = Path(tempfile.mkdtemp())"
    ),
    new_markdown_cell(
        "Plant a neuron: lengthen the unembedding row of `▁up`, remove that direction from every "
        "value vector, then make layer 1's neuron 7 write exactly that row. The lens must list "
        "`up` first for neuron 7, and for no other neuron."
    ),
    new_code_cell(
        "up = model.tokenizer.convert_tokens_to_ids(\"▁up\")\n"
        "with torch.no_grad():\n"
        "    model.lm_head.weight[up] *= 8\n"
        "    u = model.lm_head.weight[up] / model.lm_head.weight[up].norm()\n"
        "    for i in range(model.spec.n_layers):\n"
        "        weight = model.layers[i].mlp.down_proj.weight   # [d_model, d_mlp]: value vectors\n"
        "        weight -= torch.outer(u, u @ weight)\n"
        "    model.layers[1].mlp.down_proj.weight[:, 7] = 3 * model.lm_head.weight[up]"
    ),
    new_markdown_cell(
        "`norm=False` is the paper's rule (raw value vectors); `norm=True` applies the final norm "
        "first, as nnterp does. The projection streams in chunks with a progress bar."
    ),
    new_code_cell(
        "table = lens.project_value_vectors(model, top_k=10, norm=False)\n"
        "print(table)\n"
        "print(table.top_tokens(1, 7))\n"
        "table.write_text(out / \"top_tokens.txt\")\n"
        "print(*(out / \"top_tokens.txt\").read_text().splitlines()[:3], sep=\"\\n\")"
    ),
    new_markdown_cell(
        "Concept search (`exact`, `nocase` or `substring`, over each neuron's top-k tokens) and the "
        "paper's clusters (nearest value vectors by softmax-weighted top-5 token embedding). On "
        "random weights the cluster's other nine members are just the nearest random vectors."
    ),
    new_code_cell(
        "found = table.find(\"up\", match=\"nocase\")\n"
        "print(found, found.by_layer())\n"
        "up_10 = lens.cluster(table, \"up\", size=10)\n"
        "print(up_10.describe())\n"
        "assert found.pairs == ((1, 7),) and up_10.pairs[0] == (1, 7)"
    ),
    new_markdown_cell(
        "Clusters save in the reference repository's intervention-dictionary format "
        "(flat index `layer * d_mlp + neuron` -> tokens) and load back:"
    ),
    new_code_cell(
        "path = up_10.to_yaml(out / \"dictionaries.yaml\")\n"
        "print(path.read_text()[:300])\n"
        "again = NeuronCluster.from_yaml(path, \"up_10\", d_mlp=model.spec.d_mlp, n_layers=model.spec.n_layers)\n"
        "assert again == up_10"
    ),
    new_markdown_cell(
        "Rewired fraction: per layer, the share of value vectors whose top-k tokens are mostly "
        "action tokens (here k=10, at least half). tiny-openvla's action rows are scaled up, so "
        "nearly all are."
    ),
    new_code_cell(
        "print(lens.rewired_fraction(table, k=10, threshold=0.5))\n"
        "Image(filename=lens.plot_rewired(table, out / \"rewired.png\"))"
    ),
    new_markdown_cell(
        "The table saves (npz + JSON) and loads without the model; `nnsight-vla lens MODEL --out "
        "DIR` and `nnsight-vla clusters DIR --concept up --out FILE.yaml` do the same from a shell."
    ),
    new_code_cell(
        "table.save(out / \"table\")\n"
        "loaded = lens.ValueVectorTable.load(out / \"table\")\n"
        "assert lens.cluster(loaded, \"up\", size=10) == up_10"
    ),
    new_markdown_cell(
        "Logit lens: each layer's residual stream at the positions that emit the 7 action tokens, "
        "through the final norm and `lm_head`, with the distribution over the 256 action bins."
    ),
    new_code_cell(
        "rng = np.random.default_rng(0)\n"
        "obs = Observation(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), \"pick up the black bowl\")\n"
        "reading = lens.logit_lens(model, obs)\n"
        "print(reading.describe(k=2))\n"
        "print(reading.action_distribution().shape)\n"
        "Image(filename=reading.plot(out / \"logit_lens.png\"))"
    ),
]
