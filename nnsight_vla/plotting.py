"""PNG figures drawn without pyplot, so no global matplotlib state (backend, open figures) changes."""

from __future__ import annotations

from pathlib import Path


def figure(width: float, height: float):
    """A matplotlib `Figure` detached from pyplot."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def save_png(fig, path: str | Path) -> Path:
    """Write ``fig`` as a PNG (creating folders); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    return path
