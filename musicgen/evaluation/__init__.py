"""Evaluation of generated music: per-piece statistics and drift over long generations.

Submodules (import them directly; this package import stays light):

* :mod:`musicgen.evaluation.metrics` -- ``music_statistics``, ``aggregate``,
  ``format_comparison_table`` and the individual metrics (H1/H4, GS, CPI, ...).
* :mod:`musicgen.evaluation.drift` -- ``windowed_statistics`` over token windows.
* :mod:`musicgen.evaluation.report` -- the evaluate job (``EvaluateOptions``, ``evaluate``), built from one
  module per part: ``options``, ``eval_cache``, ``unigram``, ``likelihood_report``, ``music_report``,
  ``drift_report`` (with ``windows``), ``tables`` and ``plots``.

The names below are re-exported lazily (PEP 562) so ``import musicgen.evaluation``
does not pull in NumPy until a metric is actually used.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "music_statistics": "metrics",
    "aggregate": "metrics",
    "format_comparison_table": "metrics",
    "skipped_token_share": "metrics",
    "STAT_KEYS": "metrics",
    "windowed_statistics": "drift",
    "form_report": "form", "continuation_report": "form", "teacher_forced_recall": "recall",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
