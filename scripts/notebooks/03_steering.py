"""Steering: clamps and other interventions in nnsight's syntax."""

from nbformat.v4 import new_code_cell, new_markdown_cell

CELLS = [
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
