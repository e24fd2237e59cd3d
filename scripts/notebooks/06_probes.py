"""Action-head probes: collect activations, fit per-layer probes."""

from nbformat.v4 import new_code_cell, new_markdown_cell

CELLS = [
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
        "# This notebook's settings (the test suite runs it with smaller ones, set after this cell)\n"
        "FRAMES, STRIDE = 40, 12  # frames kept per demonstration, simulator steps between them\n"
        "SHUFFLES = 2             # episode-shuffled targets for each probe's chance level\n"
        "STEPS = 8                # closed-loop steps of the direction check",
        metadata={"tags": ["parameters"]},
    ),
    new_code_cell(
        "import matplotlib.pyplot as plt\n"
        "from IPython.display import Image\n"
        "import nnsight_vla\n"
        "from nnsight_vla import Site\n"
        "from nnsight_vla.probes import collect_to_disk, probe_folder\n"
        "from nnsight_vla.probes.demos import convert_robosuite_demos\n\n"
        "root = convert_robosuite_demos(\"lift\", \"work/lift\", max_frames=FRAMES, stride=STRIDE, overwrite=True, progress=False)\n"
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
        "results = probe_folder(store, targets=[\"state\", \"gripper\"], folds=3, inner_folds=2, shuffles=SHUFFLES, progress=False)\n"
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
        "                        \"libero_spatial\", [0], episodes=1, call=0, max_steps=STEPS, camera_size=64)\n"
        "for condition, summary in check.summary.items():\n"
        "    print(f\"{condition:9s} path length {summary['path_length']:.4f} m, lowest gripper height {summary['min_height']:.4f} m\")"
    ),
]
