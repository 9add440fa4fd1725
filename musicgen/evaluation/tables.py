"""Console tables of evaluate: NLL by position, drift per window, and the machine-readable last line."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .likelihood import NATS_PER_BIT


def nll_by_position_line(buckets: Mapping[str, float]) -> str:
    """The machine-readable last line of evaluate.py: `nll_by_position: [0,512): 1.234  [512,1024): 1.300`."""
    return "nll_by_position: " + "  ".join(f"{k}: {v:.3f}" for k, v in buckets.items())


def format_nll_table(report: Any) -> str:
    """Bucket | targets | model nats | model bits | unigram nats, with overall first."""
    counts = report.to_dict()["targets_by_position"]
    model_b, uni_b = report.all_buckets("model"), report.all_buckets("unigram")
    rows = [("positions", "targets", "nats/token", "bits/token", "unigram nats")]
    uni_all = f"{report.unigram.mean:.3f}" if report.unigram else "-"
    rows.append(("all", str(int(report.model.count.sum())), f"{report.model.mean:.3f}",
                 f"{report.model.mean / NATS_PER_BIT:.3f}", uni_all))
    for key, value in model_b.items():
        note = " (L/2..L)" if key == report.reference_bucket else ""
        uni = f"{uni_b[key]:.3f}" if key in uni_b else "-"
        rows.append((key + note, str(counts.get(key, 0)), f"{value:.3f}", f"{value / NATS_PER_BIT:.3f}", uni))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"{r[0]:<{widths[0]}}" + "".join(f"  {c:>{w}}" for c, w in zip(r[1:], widths[1:])) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def format_drift_table(report: Any, keys: Sequence[str] = ("H1", "H4", "GS", "CPI", "note_density",
                                                                  "empty_bar_rate", "skipped_share")) -> str:
    """One row per window: token range, then the mean over samples of each statistic."""
    means = report.window_means()
    header = ["window", "tokens"] + list(keys)
    rows = [header]
    for w, m in enumerate(means):
        start = int(m.get("start_token", w * report.window))
        span = f"[{start},{start + int(m.get('n_tokens', report.window))})"
        rows.append([str(w), span] + [f"{m.get(k, float('nan')):.3f}" for k in keys])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.rjust(wd) for c, wd in zip(r, widths)) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
