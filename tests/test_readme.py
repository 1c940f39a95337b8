"""The README's code for each audience runs: every fenced ``python`` block that follows a
``<!-- tested: NAME -->`` marker is run in its own fresh interpreter (in a temporary folder,
without ``TF_USE_LEGACY_KERAS``, as a user's script would start) with a timeout."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = re.compile(r"<!-- tested: ([\w-]+) -->\s*\n```python\n(.*?)\n```", re.DOTALL)
AUDIENCES = {"tfrs", "keras2", "keras3"}


def readme_blocks() -> dict[str, str]:
    """``{name: code}`` of the marked blocks (a name used twice is an error)."""
    blocks: dict[str, str] = {}
    for name, code in MARKER.findall(README.read_text(encoding="utf-8")):
        if name in blocks:
            raise ValueError(f"README.md marks two blocks `tested: {name}`")
        blocks[name] = code
    return blocks


def test_every_audience_has_a_tested_block():
    assert AUDIENCES <= set(readme_blocks())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(AUDIENCES))
def test_readme_block_runs(name, tmp_path):
    code = readme_blocks()[name]
    environment = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    environment |= {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(README.parent)}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"README block {name!r} failed:\n{result.stderr[-4000:]}"


def test_serving_example_is_the_tested_file():
    """The README's faiss + tensorflow example is ``tests/index/serving_example.py``'s
    ``recommend`` (which tests/index/test_query_model.py runs), verbatim, with a 15-line body."""
    example = (README.parent / "tests" / "index" / "serving_example.py").read_text("utf-8")
    function = example[example.index("def recommend(") : example.index("\n\nif __name__")]
    assert function.strip() in README.read_text(encoding="utf-8")
    body = [line for line in function.splitlines()[2:] if line.strip()]  # after def + docstring
    assert len(body) <= 15, len(body)
