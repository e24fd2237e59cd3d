"""Write notebooks/NAME.ipynb from the cell sources in scripts/notebooks/NAME.py (run after editing one)."""

import importlib.util
from pathlib import Path

import nbformat
from nbformat.v4 import new_notebook

ROOT = Path(__file__).resolve().parent.parent
SOURCES = Path(__file__).resolve().parent / "notebooks"


def cells(source: Path) -> list:
    """The ``CELLS`` list of one cell-source file."""
    spec = importlib.util.spec_from_file_location(f"notebook_{source.stem}", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CELLS


def write(name: str, cells: list) -> Path:
    notebook = new_notebook(cells=cells)
    for i, cell in enumerate(notebook.cells):  # stable ids: regenerating changes nothing
        cell["id"] = f"{name.split('_')[0]}-{i:02d}"
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = ROOT / "notebooks" / name
    nbformat.write(notebook, path)
    return path


if __name__ == "__main__":
    for source in sorted(SOURCES.glob("[0-9][0-9]_*.py")):
        print(f"wrote {write(source.stem + '.ipynb', cells(source))}")
