"""The mini-VLA study: how ``mini-openvla`` is built (frames, training, checks) and the paper's
experiment run on it (open-loop and closed-loop, with random controls), its explanation and its
report. An experiment package beside the project, not part of the OpenVLA family: the family
only loads the model (``nnsight_vla_openvla.mini``).

    python -m nnsight_vla_mini.experiment open-loop --out runs/mini/open-loop-99 --sizes 10,20,40 --values 0.5,2,8 --controls 99
    python -m nnsight_vla_mini.report --grid --runs runs/mini/open-loop-99 --out docs/mini_vla
"""

from pathlib import Path

#: The study's data: the held-out frames, the training metrics and loss curves.
DATA = Path(__file__).parent / "data"
