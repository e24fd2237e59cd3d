"""The quickstart: load, trace, read, predict, steer."""

from nbformat.v4 import new_code_cell, new_markdown_cell

CELLS = [
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
