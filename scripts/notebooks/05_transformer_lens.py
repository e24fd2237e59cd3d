"""The TransformerLens side: bridges, hooks, SAE-Lens."""

from nbformat.v4 import new_code_cell, new_markdown_cell

CELLS = [
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
