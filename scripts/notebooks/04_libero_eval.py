"""Closed-loop LIBERO evaluation of steered policies."""

from nbformat.v4 import new_code_cell, new_markdown_cell

CELLS = [
    new_markdown_cell(
        "# Closed-loop evaluation in LIBERO\n\n"
        "Baseline, steered and random-control rollouts on the same init state, with metrics, "
        "paired statistics, plots and videos. A tiny random model does not solve tasks; this shows "
        "the machinery on a few steps. Set-up (`make env`) put LIBERO's assets in place."
    ),
    new_code_cell(
        "# This notebook's settings (the test suite runs it with smaller ones, set after this cell)\n"
        "STEPS = 15  # steps of each rollout",
        metadata={"tags": ["parameters"]},
    ),
    new_code_cell(
        "import json\n"
        "import nnsight_vla\n"
        "from nnsight_vla import Clamp, lens\n"
        "from nnsight_vla.eval import evaluate\n\n"
        "model = nnsight_vla.load(\"tiny-openvla\")\n"
        "up = lens.cluster(lens.project_value_vectors(model, progress=False), \"up\", size=8, allow_unmatched=True)\n"
        "result = evaluate(model, \"libero_spatial\", [0], episodes=1, steering=Clamp(up, 8.0),\n"
        "                  max_steps=STEPS, camera_size=64, record_video=True, out_dir=\"runs/notebook-eval\")\n"
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
