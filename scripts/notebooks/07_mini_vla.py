"""The paper's experiment on mini-openvla."""

from nbformat.v4 import new_code_cell, new_markdown_cell

CELLS = [
    new_markdown_cell(
        "# Does steering by semantic neurons work? The experiment on `mini-openvla`\n\n"
        "`mini-openvla` is `smol-openvla` (SmolLM2-135M inside OpenVLA's architecture) taught to "
        "follow motion instructions on LIBERO scenes: it first says two words (\" up fast\", "
        "\" stay still\") and then emits the 7 action tokens, which follow the words. Its FFN "
        "value vectors are SmolLM2's own (`down_proj` was not trained), so the lens finds the "
        "paper's \"up\", \"down\", \"fast\" and \"slow\" clusters in it. The paper's question: "
        "does clamping them move the arm, more than clamping random clusters? This notebook runs "
        "every step of the experiment on a reduced setting; the full run's results, made by "
        "`python -m nnsight_vla_mini.experiment`, are shown at the end."
    ),
    new_code_cell(
        "# This notebook's settings (the test suite runs it with smaller ones, set after this cell)\n"
        "LENS_LAYERS = None          # the layers the lens projects (None: all 30)\n"
        "SCENES, CONTROLS = 2, 3     # open-loop: held-out scenes, random clusters per concept\n"
        "STEPS, LOOP_CONTROLS = 3, 2 # closed-loop: steps, random clusters",
        metadata={"tags": ["parameters"]},
    ),
    new_code_cell(
        "import json\n"
        "from pathlib import Path\n"
        "from IPython.display import Image\n"
        "import nnsight_vla\n"
        "from nnsight_vla import Observation, lens\n"
        "from nnsight_vla_mini import frames, experiment\n\n"
        "mini = nnsight_vla.load(\"mini-openvla\")\n"
        "scene = frames.load()[-1]  # a LIBERO scene of a task never trained on\n"
        "for text in (\"move up quickly\", \"now travel to the left gently\", experiment.NEUTRAL):\n"
        "    said, action = mini.say_and_act(Observation(scene, text))\n"
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
        "table = lens.project_value_vectors(mini, top_k=10, layers=LENS_LAYERS, progress=False)\n"
        "clusters = experiment.concept_clusters(mini, [20], table)\n"
        "for (concept, size), cluster in clusters.items():\n"
        "    print(cluster.description)\n"
        "print(\"up and down share\", len(set(clusters['up', 20]) & set(clusters['down', 20])), \"of 20 neurons\")"
    ),
    new_markdown_cell(
        "Open-loop (single frames, the neutral instruction \"move the arm\"): the up and down clusters clamped "
        "at 2 (about 4x their neurons' typical maximum, a quarter of the largest) vs 3 random clusters "
        "of the same size and layers (the full run: sizes 10/20/40, values 0.5/2/8, 99 random "
        "clusters per cell, more for a cell with p <= 0.05, 4 scenes). p is the rank p-value among the "
        "controls; with 3 controls it cannot go below 0.25, so these rows show the method, not a test."
    ),
    new_code_cell(
        "rows = experiment.open_loop_grid(mini, \"mini-openvla\", Path(\"work/open-loop\"), sizes=[20], values=[2.0],\n"
        "                                 controls=CONTROLS, frames_used=SCENES, table=table, concepts=[\"up\", \"down\"])\n"
        "for r in rows:\n"
        "    print(f\"{r['steering']:10s} {r['measure']:5s} shift {r['shift']:+.3f}  z {r['z']:+.2f}  \"\n"
        "          f\"p {r['p']:.2f} (N={r['controls']}, at best {r['p_min']:.2f})  says {sorted(set(r['words']))}\")"
    ),
    new_markdown_cell(
        "Closed-loop in LIBERO (the paper's protocol: the clamp is on for every forward of every "
        "step), every condition told \"move the arm\": baseline, the \"up\" cluster, and 2 random "
        "clusters, for 3 steps (the full run: 4 concepts, 10 random clusters each, 2 init states, 10 steps; "
        "`up_20@2` rerun against 49 random clusters, every condition in the same scene, where it beats "
        "all 49: p = 0.02 before correcting for having picked it among 20 cells)."
    ),
    new_code_cell(
        "result = experiment.closed_loop(mini, Path(\"work/closed-loop\"), size=20, value=2.0, controls=LOOP_CONTROLS,\n"
        "                                episodes=1, max_steps=STEPS, concepts=[\"up\"], table=table)\n"
        "scored = result.statistics[\"vs_random\"][\"up_20@2\"]\n"
        "print({metric: (round(scored[metric][\"z\"], 2), round(scored[metric][\"p\"], 2))\n"
        "       for metric in (\"z_displacement\", \"mean_speed\", \"path_length\")})  # (z, rank p)\n"
        "Image(\"work/closed-loop/trajectories.png\")"
    ),
    new_markdown_cell(
        "## The full run\n\n"
        "Made with `python -m nnsight_vla_mini.experiment open-loop|closed-loop` and "
        "`python -m nnsight_vla_mini.explain`; docs/mini_vla/README.md gives the "
        "protocol, the tables and the verdict."
    ),
    new_code_cell(
        "results = Path(nnsight_vla.__file__).resolve().parent.parent / \"docs\" / \"mini_vla\"\n"
        "for page in (\"open-loop-99.md\", \"closed-loop-same-scene.md\", \"results.md\"):\n"
        "    print((results / page).read_text())\n"
        "Image(results / \"explain.png\")"
    ),
]
