"""Write the notebooks from their cell sources (run after editing this file)."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

QUICKSTART = [
    new_markdown_cell(
        "# nnsight-vla quickstart\n\n"
        "Load a VLA as an nnsight model, trace it, read activations, predict an action and "
        "steer FFN neurons — on the built-in `tiny-openvla` (random weights, offline). "
        "Swap in `\"openvla/openvla-7b-finetuned-libero-10\"` (or its local folder) with "
        "`dtype=\"bfloat16\", device=\"cuda\", center_crop=True` for the real model."
    ),
    new_code_cell(
        "import numpy as np\n"
        "import nnsight_vla\n"
        "from nnsight_vla import Observation\n\n"
        "model = nnsight_vla.load(\"tiny-openvla\")\n"
        "model.spec"
    ),
    new_markdown_cell("Standard names alias the family's own modules (which keep working):"),
    new_code_cell(
        "assert model.layers[1] is model.language_model.model.layers[1]\n"
        "print(model.layers[1].mlp.down_proj)\n"
        "print(model.ln_final, model.lm_head)"
    ),
    new_code_cell(
        "rng = np.random.default_rng(0)\n"
        "obs = Observation(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), \"pick up the black bowl\")\n"
        "with model.trace(obs):\n"
        "    acts = model.layers[1].mlp.down_proj.input.save()   # FFN activation coefficients\n"
        "    logits = model.lm_head.output.save()\n"
        "acts.shape, model.token_strings(logits[0, -1].topk(3).indices)"
    ),
    new_markdown_cell("Predict an action: a plain call returns the un-normalised 7-D action."),
    new_code_cell("baseline = model.predict_action(obs)\nbaseline"),
    new_markdown_cell(
        "Steer: clamp four FFN neurons (the paper's rule) on every one of the 7 forward passes "
        "that generate the action tokens. Nothing remains after the block."
    ),
    new_code_cell(
        "neurons = [3, 17, 42, 200]\n"
        "with model.predict_action(obs) as tracer:\n"
        "    for step in tracer.iter[:7]:\n"
        "        model.layers[1].mlp.down_proj.input[..., neurons] = 8.0\n"
        "    steered = tracer.result.save()\n"
        "print(\"baseline\", baseline)\n"
        "print(\"steered \", steered)\n"
        "assert np.array_equal(model.predict_action(obs), baseline)"
    ),
    new_markdown_cell("Save in the official OpenVLA layout and load it back:"),
    new_code_cell(
        "import tempfile\n"
        "folder = model.save_pretrained(tempfile.mkdtemp() + \"/tiny-openvla\")\n"
        "reloaded = nnsight_vla.load(folder)\n"
        "assert np.array_equal(reloaded.predict_action(obs), baseline)\n"
        "sorted(p.name for p in folder.iterdir())"
    ),
]

LENSES = [
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


STEERING = [
    new_markdown_cell(
        "# Steering with interventions\n\n"
        "`Clamp`, `Scale`, `Ablate` and `Add` say what to change; `positions`, `calls`, `steps` and "
        "`tower` say where and when. The same objects work around plain calls (`model.steer`), "
        "inside nnsight traces (`.apply`) and on TransformerLens hook points. Every comparison "
        "gets a random control with the same number of neurons per layer."
    ),
    new_code_cell(
        "import numpy as np\n"
        "import nnsight_vla\n"
        "from nnsight_vla import Clamp, Add, Observation, lens\n"
        "from nnsight_vla.steering import mean_difference, unit\n\n"
        "model = nnsight_vla.load(\"tiny-openvla\")\n"
        "rng = np.random.default_rng(0)\n"
        "obs = Observation(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), \"pick up the black bowl\")\n"
        "table = lens.project_value_vectors(model, progress=False)\n"
        "up = lens.cluster(table, \"up\", size=8, allow_unmatched=True)  # random weights: nothing lists \"up\"\n"
        "control = up.random_like(seed=0)\n"
        "print(up.describe())"
    ),
    new_markdown_cell("Around plain calls — nothing remains after the block, even on an exception:"),
    new_code_cell(
        "baseline = model.predict_action(obs)\n"
        "with model.steer(Clamp(up, 8.0)):\n"
        "    steered = model.predict_action(obs)\n"
        "with model.steer(Clamp(control, 8.0)):\n"
        "    controlled = model.predict_action(obs)\n"
        "print(\"steered - baseline:\", np.round(steered - baseline, 3))\n"
        "print(\"control - baseline:\", np.round(controlled - baseline, 3))\n"
        "assert np.array_equal(model.predict_action(obs), baseline)"
    ),
    new_markdown_cell(
        "The paper's rule for autoregressive decoding clamps on the prefill only (`calls=\"prefill\"`); "
        "inside a trace, `apply` acts at the loop's step and gives the same actions as `model.steer`:"
    ),
    new_code_cell(
        "prefill = Clamp(up, 8.0, calls=\"prefill\")\n"
        "with model.predict_action(obs) as tracer:\n"
        "    for step in tracer.iter[:7]:\n"
        "        prefill.apply(model, step)\n"
        "    traced = tracer.result.save()\n"
        "with model.steer(prefill):\n"
        "    assert np.array_equal(model.predict_action(obs), traced)\n"
        "traced"
    ),
    new_markdown_cell("A contrastive direction added to the residual stream:"),
    new_code_cell(
        "other = Observation(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), \"open the top drawer\")\n"
        "direction = unit(mean_difference(model, obs, other, layer=0))   # toward obs, away from other\n"
        "plain = model.predict_action(other)\n"
        "with model.steer(Add(direction, layer=0, alpha=4.0, positions=\"last\")):\n"
        "    pushed = model.predict_action(other)\n"
        "print(\"pushed - plain:\", np.round(pushed - plain, 3))\n"
        "assert not np.array_equal(pushed, plain)"
    ),
    new_markdown_cell(
        "Pi0: steer the action expert on chosen denoising steps. The last VLM layer cannot change "
        "the actions (the expert reads only the VLM's keys and values): steering it warns and "
        "changes nothing."
    ),
    new_code_cell(
        "pi0 = nnsight_vla.load(\"tiny-pi0\")\n"
        "images = {c: rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for c in pi0.spec.camera_names}\n"
        "pobs = Observation(images, \"pick up the black bowl\", state=np.zeros(pi0.spec.state_dim))\n"
        "chunk = pi0.predict_action(pobs, seed=0)\n"
        "with pi0.steer(Clamp([(1, 0), (1, 1)], 4.0, tower=\"expert\", steps=[0, 1, 2])):\n"
        "    early = pi0.predict_action(pobs, seed=0)\n"
        "with pi0.steer(Clamp([(pi0.spec.n_layers - 1, 0)], 4.0)):\n"
        "    inert = pi0.predict_action(pobs, seed=0)\n"
        "print(\"expert, steps 0-2:\", np.abs(early - chunk).max(), \" last VLM layer:\", np.abs(inert - chunk).max())"
    ),
]


EVALUATION = [
    new_markdown_cell(
        "# Closed-loop evaluation in LIBERO\n\n"
        "Baseline, steered and random-control rollouts on the same init state, with metrics, "
        "paired statistics, plots and videos. A tiny random model does not solve tasks; this shows "
        "the machinery on a few steps. Set-up (`make env`) put LIBERO's assets in place."
    ),
    new_code_cell(
        "import json\n"
        "import nnsight_vla\n"
        "from nnsight_vla import Clamp, lens\n"
        "from nnsight_vla.eval import evaluate\n\n"
        "model = nnsight_vla.load(\"tiny-openvla\")\n"
        "up = lens.cluster(lens.project_value_vectors(model, progress=False), \"up\", size=8, allow_unmatched=True)\n"
        "result = evaluate(model, \"libero_spatial\", [0], episodes=1, steering=Clamp(up, 8.0),\n"
        "                  max_steps=15, camera_size=64, record_video=True, out_dir=\"runs/notebook-eval\")\n"
        "for condition, means in result.summary.items():\n"
        "    print(condition, {k: round(v, 4) for k, v in means.items()})"
    ),
    new_markdown_cell("Every condition starts from the same init state (the paired design):"),
    new_code_cell(
        "starts = {tuple(row[\"path\"][0]) for row in result.episodes}\n"
        "assert len(starts) == 1\n"
        "sorted(p.name for p in result.out_dir.iterdir())"
    ),
    new_code_cell(
        "from IPython.display import Image\n"
        "Image(filename=str(result.out_dir / \"trajectories.png\"))"
    ),
]


TRANSFORMER_LENS = [
    new_markdown_cell(
        "# TransformerLens on a VLA\n\n"
        "`nnsight_vla.transformer_lens` bridges a VLA's language model as a TransformerLens "
        "`TransformerBridge` (sharing the model's weights, never altering it), feeds it exactly "
        "what it sees inside the policy, and runs TransformerLens hooks on real predictions."
    ),
    new_code_cell(
        "import numpy as np\n"
        "import torch\n"
        "import transformer_lens.patching as patching\n"
        "import nnsight_vla\n"
        "import nnsight_vla.lens\n"
        "from nnsight_vla import Clamp, Observation, Site\n"
        "from nnsight_vla.transformer_lens import bridge_inputs, hooks, to_bridge, token_inputs\n\n"
        "model = nnsight_vla.load(\"tiny-openvla\")\n"
        "image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)\n"
        "obs = Observation(image, \"pick up the black bowl\")\n"
        "bridge = to_bridge(model)\n"
        "logits, cache = bridge.run_with_cache(**bridge_inputs(model, obs))\n"
        "print(len(cache), \"activations cached, e.g.\", [k for k in cache.keys() if k.startswith(\"blocks.1.\")][:6])"
    ),
    new_markdown_cell("The cache holds what nnsight reads at the same site, and the bridge's logits are the VLA's:"),
    new_code_cell(
        "with model.trace(obs):\n"
        "    acts = Site(1, \"neurons\").read(model).save()\n"
        "    head = model.lm_head.output.save()\n"
        "print((cache[\"blocks.1.mlp.hook_post\"] - acts).abs().max().item(), (logits - head).abs().max().item())\n"
        "model.token_strings(logits[0, -1].topk(3).indices)   # the first action token's candidates"
    ),
    new_markdown_cell(
        "Activation patching between two instructions of one scene: `token_inputs` gives token ids "
        "whose image patches are written at `hook_embed`, so `transformer_lens.patching` runs as on "
        "a text model. The metric is the clean run's first action token."
    ),
    new_code_cell(
        "corrupt = Observation(image, \"pick up the white bowl\")\n"
        "with token_inputs(model, bridge, obs) as clean_tokens:\n"
        "    clean_logits, clean_cache = bridge.run_with_cache(clean_tokens)\n"
        "    with token_inputs(model, bridge, corrupt) as corrupt_tokens:\n"
        "        pass\n"
        "    target = int(clean_logits[0, -1].argmax())\n"
        "    corrupt_logits = bridge(corrupt_tokens)\n"
        "    metric = lambda out: out[0, -1, target] - corrupt_logits[0, -1, target]\n"
        "    effect = patching.get_act_patch_resid_pre(bridge, corrupt_tokens, clean_cache, metric)\n"
        "where = (clean_tokens != corrupt_tokens)[0].nonzero().flatten().tolist()\n"
        "print(\"positions that differ:\", where, \"effect there by layer:\", effect[:, where].flatten().tolist())\n"
        "print(\"largest effects (layer, position):\", [divmod(int(i), effect.shape[1]) for i in effect.flatten().abs().topk(3).indices])"
    ),
    new_markdown_cell(
        "A TransformerLens hook function steers real predictions, exactly as `Clamp` does through "
        "`model.steer` (every one of the 7 decoding forwards):"
    ),
    new_code_cell(
        "def clamp(acts, hook):\n"
        "    acts[..., [3, 17, 42]] = 6.0\n"
        "    return acts\n\n"
        "with hooks(model, [(\"blocks.1.mlp.hook_post\", clamp)]):\n"
        "    hooked = model.predict_action(obs)\n"
        "with model.steer(Clamp([(1, 3), (1, 17), (1, 42)], 6.0)):\n"
        "    steered = model.predict_action(obs)\n"
        "assert np.array_equal(hooked, steered)\n"
        "hooked - model.predict_action(obs)"
    ),
    new_markdown_cell(
        "SAE-Lens: train a small sparse autoencoder on the residual stream after layer 0 (every "
        "position of a few prefills, collected by the project's collector), saved in SAE-Lens's "
        "format; read its features on a prediction, then clamp one feature through `model.steer` "
        "(the SAE's reconstruction error is added back, so an untouched SAE changes nothing)."
    ),
    new_code_cell(
        "import tempfile\n"
        "from nnsight_vla.transformer_lens import ClampFeatures, load_sae, sae_features, train_sae\n\n"
        "rng = np.random.default_rng(1)\n"
        "scenes = [Observation(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8), text)\n"
        "          for text in (\"pick up the black bowl\", \"open the top drawer\", \"put the cup on the plate\")]\n"
        "folder = tempfile.mkdtemp()\n"
        "sae = train_sae(model, scenes, Site(0, \"resid\"), folder, d_sae=128, steps=300, progress=False)\n"
        "sae = load_sae(folder, model)                                  # SAE-Lens's own format\n"
        "features = sae_features(model, sae, obs)                       # [obs, calls, positions, d_sae]\n"
        "top = int(features[0, 0, -1].argmax())\n"
        "print(\"most active feature at the last position:\", top, float(features[0, 0, -1, top]))\n"
        "with model.steer(ClampFeatures(sae, [top], 0.0)):\n"
        "    ablated = model.predict_action(obs)\n"
        "ablated - model.predict_action(obs)"
    ),
    new_markdown_cell(
        "A readable logit lens needs a real language model: `smol-openvla` (SmolLM2-135M inside "
        "OpenVLA's architecture). In compatibility mode the final norm is folded into the "
        "unembedding, so `accumulated_resid(apply_ln=True) @ W_U` reads each layer's residual "
        "as the final layer's logits would; action tokens decode as `[action: x]`."
    ),
    new_code_cell(
        "smol = nnsight_vla.load(\"smol-openvla\")\n"
        "folded = to_bridge(smol, compatibility=True)\n"
        "_, smol_cache = folded.run_with_cache(**bridge_inputs(smol, Observation(image, \"move the arm up\")))\n"
        "resid = smol_cache.accumulated_resid(apply_ln=True)[:, 0, -1]   # [layers + 1, d_model], last position\n"
        "lens = resid @ folded.W_U + folded.b_U\n"
        "labels = nnsight_vla.lens.token_labels(smol)   # each token's text; action tokens as [action: x]\n"
        "for layer in range(0, lens.shape[0], 6):\n"
        "    print(layer, [labels[i] for i in lens[layer].topk(4).indices.tolist()])"
    ),
]


PROBES = [
    new_markdown_cell(
        "# Action-head probes on real trajectories\n\n"
        "Where along a policy's towers can a linear read-out recover the action, the gripper or the "
        "robot's state? `nnsight_vla.probes` collects activations to disk, fits per-layer probes "
        "validated on held-out *episodes*, compares them with a chance level from targets shuffled "
        "across episodes, and turns a probe into a steering direction. The data here are robosuite's "
        "real human demonstrations of Lift, replayed in the simulator and written as a LeRobotDataset. "
        "The policy is `tiny-pi0` (random weights): the numbers show the method, not a finding."
    ),
    new_code_cell(
        "import matplotlib.pyplot as plt\n"
        "from IPython.display import Image\n"
        "import nnsight_vla\n"
        "from nnsight_vla import Site\n"
        "from nnsight_vla.probes import collect_to_disk, probe_folder\n"
        "from nnsight_vla.probes.demos import convert_robosuite_demos\n\n"
        "root = convert_robosuite_demos(\"lift\", \"work/lift\", max_frames=40, stride=12, overwrite=True, progress=False)\n"
        "from lerobot.datasets.lerobot_dataset import LeRobotDataset\n"
        "dataset = LeRobotDataset(\"local/robosuite_lift\", root=root, video_backend=\"pyav\")\n"
        "print(dataset.num_episodes, \"episodes,\", len(dataset), \"frames; features:\", list(dataset.meta.features)[:5])\n"
        "frame = dataset[10]\n"
        "plt.imshow(frame[\"observation.images.image\"].permute(1, 2, 0)); plt.title(frame[\"task\"]); plt.axis(\"off\");"
    ),
    new_markdown_cell(
        "Collect the expert's residual stream after each layer at the first action token, at "
        "denoising steps 0, 5 and 9 (the expert's forward calls), into safetensors shards with a "
        "manifest. An interrupted collection continues with `resume=True` and gives the same arrays."
    ),
    new_code_cell(
        "model = nnsight_vla.load(\"tiny-pi0\")\n"
        "sites = [Site(layer, \"resid\", \"expert\") for layer in range(3)]\n"
        "store = collect_to_disk(model, root, sites, \"work/acts\", calls=[0, 5, 9], positions=[1],\n"
        "                        seed=0, progress=False, resume=True)\n"
        "print(store.rows(), \"rows in\", [p.name for p in store.shards()])\n"
        "print({k: v for k, v in store.manifest.items() if k in (\"sites\", \"calls\", \"positions\", \"dtype\")})"
    ),
    new_markdown_cell(
        "Probes per layer, denoising step and target: ridge for the state's dimensions (R²), "
        "logistic regression for the gripper (balanced accuracy). Folds split by episode; with only "
        "three demonstrations, targets that differ mostly *between* episodes (the orientation) "
        "cannot be predicted for an unseen one, and their R² is far below zero: that is the "
        "honest answer, which frame-level folds would have hidden."
    ),
    new_code_cell(
        "results = probe_folder(store, targets=[\"state\", \"gripper\"], folds=3, inner_folds=2, shuffles=2, progress=False)\n"
        "results.save(\"work/probes\")\n"
        "columns = [\"layer\", \"call\", \"target\", \"metric\", \"score\", \"score_low\", \"score_high\", \"chance\"]\n"
        "print(results.table.query(\"target in ['state[2]', 'gripper']\")[columns].round(3).to_string(index=False))\n"
        "Image(\"work/probes/probes.png\")"
    ),
    new_markdown_cell(
        "A probe's weight vector, mapped back to raw activations, is a direction in the residual "
        "stream: `probe_steering` adds it (unit-normed, times `alpha`) at the probe's layer. One "
        "closed-loop check in LIBERO (`check_direction`) runs it against the unsteered baseline and a random direction "
        "of the same norm, paired on the same init states and seeds."
    ),
    new_code_cell(
        "from nnsight_vla.probes import check_direction\n\n"
        "check = check_direction(model, results, Site(1, \"resid\", \"expert\"), \"state[2]\", 4.0,\n"
        "                        \"libero_spatial\", [0], episodes=1, call=0, max_steps=8, camera_size=64)\n"
        "for condition, summary in check.summary.items():\n"
        "    print(f\"{condition:9s} path length {summary['path_length']:.4f} m, lowest gripper height {summary['min_height']:.4f} m\")"
    ),
]


MINI_VLA = [
    new_markdown_cell(
        "# Does steering by semantic neurons work? The experiment on `mini-openvla`\n\n"
        "`mini-openvla` is `smol-openvla` (SmolLM2-135M inside OpenVLA's architecture) taught to "
        "follow motion instructions on LIBERO scenes: it first says two words (\" up fast\", "
        "\" stay still\") and then emits the 7 action tokens, which follow the words. Its FFN "
        "value vectors are SmolLM2's own (`down_proj` was not trained), so the lens finds the "
        "paper's \"up\", \"down\", \"fast\" and \"slow\" clusters in it. The paper's question: "
        "does clamping them move the arm, more than clamping random clusters? This notebook runs "
        "every step of the experiment on a reduced setting; the full run's results, made by "
        "`python -m nnsight_vla_openvla.mini.experiment`, are shown at the end."
    ),
    new_code_cell(
        "import json\n"
        "from pathlib import Path\n"
        "from IPython.display import Image\n"
        "import nnsight_vla\n"
        "from nnsight_vla import Observation, lens\n"
        "from nnsight_vla_openvla.mini import frames, experiment\n\n"
        "mini = nnsight_vla.load(\"mini-openvla\")\n"
        "scene = frames.load()[-1]  # a LIBERO scene of a task never trained on\n"
        "for text in (\"move up quickly\", \"now travel to the left gently\", experiment.NEUTRAL):\n"
        "    action, said = mini.predict_action(Observation(scene, text), with_phrase=True)\n"
        "    print(f\"{text!r:34s} says {said!r:14s} action {action.round(2)}\")"
    ),
    new_markdown_cell(
        "The logit lens at the positions that emit the action tokens: the residual of each layer, "
        "through the final norm, onto the vocabulary (action tokens are decoded)."
    ),
    new_code_cell(
        "reading = lens.logit_lens(mini, Observation(scene, \"move up quickly\"))\n"
        "print(reading.describe(k=2)[:1500])"
    ),
    new_markdown_cell(
        "The concept clusters, by the paper's cosine rule over the value-vector lens. SmolLM2's "
        "neurons often carry opposite words together, so \"up\" and \"down\" share neurons:"
    ),
    new_code_cell(
        "table = lens.project_value_vectors(mini, top_k=10, progress=False)\n"
        "clusters = experiment.concept_clusters(mini, [20], table)\n"
        "for (concept, size), cluster in clusters.items():\n"
        "    print(cluster.description)\n"
        "print(\"up and down share\", len(set(clusters['up', 20]) & set(clusters['down', 20])), \"of 20 neurons\")"
    ),
    new_markdown_cell(
        "Open-loop (single frames, the neutral instruction \"move the arm\"): the up and down clusters clamped "
        "at 2 (about 4x their neurons' typical maximum, a quarter of the largest) vs 3 random clusters "
        "of the same size and layers (the full run: sizes 10/20/40, values 0.5/2/8, 10 random "
        "clusters, 4 scenes)."
    ),
    new_code_cell(
        "rows = experiment.open_loop_grid(mini, \"mini-openvla\", Path(\"work/open-loop\"), sizes=[20], values=[2.0],\n"
        "                                 controls=3, frames_used=2, table=table, concepts=[\"up\", \"down\"])\n"
        "for r in rows:\n"
        "    print(f\"{r['steering']:10s} {r['measure']:5s} shift {r['shift']:+.3f}  z {r['z']:+.2f}  says {sorted(set(r['words']))}\")"
    ),
    new_markdown_cell(
        "Closed-loop in LIBERO (the paper's protocol: the clamp is on for every forward of every "
        "step), every condition told \"move the arm\": baseline, the \"up\" cluster, and 2 random "
        "clusters, for 3 steps (the full run: 4 concepts, 10 random clusters each, 2 init states, 15 steps)."
    ),
    new_code_cell(
        "result = experiment.closed_loop(mini, Path(\"work/closed-loop\"), size=20, value=2.0, controls=2,\n"
        "                                episodes=1, max_steps=3, concepts=[\"up\"], table=table)\n"
        "scored = result.statistics[\"vs_random\"][\"up_20@2\"]\n"
        "print({metric: round(scored[metric][\"z\"], 2) for metric in (\"z_displacement\", \"mean_speed\", \"path_length\")})\n"
        "Image(\"work/closed-loop/trajectories.png\")"
    ),
    new_markdown_cell(
        "## The full run\n\n"
        "Made with `python -m nnsight_vla_openvla.mini.experiment open-loop|closed-loop` and "
        "`python -m nnsight_vla_openvla.mini.explain`; the README's section \"Does steering by "
        "semantic neurons work?\" gives the verdict."
    ),
    new_code_cell(
        "results = Path(nnsight_vla.__file__).resolve().parent.parent / \"docs\" / \"mini_vla\"\n"
        "print((results / \"results.md\").read_text())\n"
        "Image(results / \"explain.png\")"
    ),
]


def write(name: str, cells: list) -> None:
    notebook = new_notebook(cells=cells)
    for i, cell in enumerate(notebook.cells):  # stable ids: regenerating changes nothing
        cell["id"] = f"{name.split('_')[0]}-{i:02d}"
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = Path(__file__).resolve().parent.parent / "notebooks" / name
    nbformat.write(notebook, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    write("01_quickstart.ipynb", QUICKSTART)
    write("02_lenses.ipynb", LENSES)
    write("03_steering.ipynb", STEERING)
    write("04_libero_eval.ipynb", EVALUATION)
    write("05_transformer_lens.ipynb", TRANSFORMER_LENS)
    write("06_probes.ipynb", PROBES)
    write("07_mini_vla.ipynb", MINI_VLA)
