"""The house's layout rules that a reader can check with `wc -l`: every package module does one job and stays
short enough to read in one sitting (at most 450 lines; the metric catalogue is the one exception)."""

from __future__ import annotations

from support import REPO

MAX_LINES = 450
EXCEPTIONS = {"musicgen/evaluation/metrics.py"}  # a catalogue of independent metrics, one function each


def test_every_package_module_is_at_most_450_lines():
    long = {}
    for path in sorted((REPO / "musicgen").rglob("*.py")):
        name = path.relative_to(REPO).as_posix()
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES and name not in EXCEPTIONS:
            long[name] = lines
    assert not long, f"modules over {MAX_LINES} lines (split them by job): {long}"
