"""Small helpers shared by the benchmark scripts: medians, tables, JSON results, data location."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def shared_data() -> Path:
    """Where the real MIDI lives: $MUSICGEN_SHARED_DATA, else ../shared/data beside the repo."""
    return Path(os.environ.get("MUSICGEN_SHARED_DATA", REPO.parent / "shared" / "data"))


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    text = "\n".join(lines)
    print(text)
    return text


def write_results(name: str, payload: dict[str, Any], out: str | Path | None = None, quiet: bool = False) -> Path:
    """Write ``payload`` to ``out``, by default benchmarks/results/<name>.json (``quiet``: no message, for the
    partial results a long run rewrites after every row, so a run cut short still leaves its rows)."""
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str))
    if not quiet:
        print(f"wrote {path}")
    return path

def sem(values: list[float]) -> float:
    """Standard error of the mean of the finite values (NaN with fewer than two)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    return round(float(x.std(ddof=1) / np.sqrt(len(x))), 4) if len(x) > 1 else float("nan")


def parse_options(items: list[str]) -> dict:
    """``NAME=VALUE`` pairs -> generate() keyword arguments (VALUE read as YAML: 0, 0.5, null, true)."""
    import yaml

    options = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"error: --option {item!r}: expected NAME=VALUE")
        options[name] = yaml.safe_load(value)
    return options
