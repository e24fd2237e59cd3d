"""The docs cannot drift from the code: every block of README.md and docs/ fenced as
```python run``` is executed, a page's blocks in order in one namespace, in a fresh folder."""

import linecache
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
#: Topic pages with nothing to run, and why (every other page under docs/ must run something).
NOTHING_TO_RUN = {
    "docs/remote.md": "needs the NDIF stack; tests/test_ndif.py runs the same calls against it",
    "docs/benchmarks.md": "timings: benchmarks/ measures them, tests never do",
    "docs/mini_vla/README.md": "its runs take hours (commands shown); docs/families.md runs mini-openvla",
    "docs/mini_vla/results.md": "a generated report of runs (nnsight_vla_mini.report)",
    "docs/mini_vla/open-loop-99.md": "a generated report of runs (nnsight_vla_mini.report)",
    "docs/mini_vla/closed-loop-49.md": "a generated report of runs (nnsight_vla_mini.report)",
    "docs/mini_vla/closed-loop-same-scene.md": "a generated report of runs (nnsight_vla_mini.report)",
}
FENCE = re.compile(r"^```(\S*)[ \t]*(.*)$")


def blocks(page: Path) -> list[tuple[int, str, str]]:
    """``(line, info, code)`` of every fenced block of ``page`` (``info``: the fence's words)."""
    found, open_at, info, body = [], None, "", []
    for number, line in enumerate(page.read_text().splitlines(), 1):
        match = FENCE.match(line)
        if open_at is None and match:
            open_at, info, body = number, " ".join(match.groups()).strip(), []
        elif open_at is not None and line.startswith("```"):
            found.append((open_at, info, "\n".join(body) + "\n"))
            open_at = None
        elif open_at is not None:
            body.append(line)
    assert open_at is None, f"{page}:{open_at}: a fence is never closed"
    return found


def runnable(page: Path) -> list[tuple[int, str]]:
    return [(line, code) for line, info, code in blocks(page) if info.split() == ["python", "run"]]


def name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def test_every_topic_page_runs_something_or_says_why_not():
    silent = {name(p) for p in PAGES if not runnable(p)} - {"README.md"}
    assert silent == set(NOTHING_TO_RUN), "pages with no ```python run block must be listed with a reason"
    odd = [(name(p), line, info) for p in PAGES for line, info, _ in blocks(p)
           if info.startswith("python") and info not in ("python", "python run")]
    assert not odd, f"fences are ```python (shown) or ```python run (executed): {odd}"


def test_the_fence_reader_finds_what_a_page_marks(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("text\n```python run\nx = 1\n```\n```python\ny = 2\n```\n```bash\nls\n```\n")
    assert blocks(page) == [(2, "python run", "x = 1\n"), (5, "python", "y = 2\n"), (8, "bash", "ls\n")]
    assert runnable(page) == [(2, "x = 1\n")]


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if runnable(p)], ids=name)
def test_the_runnable_blocks_of_a_page_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    for line, code in runnable(page):
        # padded to the page's own line numbers, under a name that says where the block is;
        # linecache holds the source, since nnsight reads a `with` block's body back from it
        source, filename = "\n" * line + code, f"{name(page)} (block at line {line})"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        try:
            exec(compile(source, filename, "exec"), namespace)
        finally:
            linecache.cache.pop(filename, None)
