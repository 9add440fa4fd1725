"""The music-statistics part of evaluate: generated MIDI vs the split's songs, both through one tokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import UserError
from .eval_cache import split_songs


def reference_statistics(cache: Any, split: str, tokenizer: Any, max_files: int | None = None,
                         ) -> list[dict[str, float]]:
    """`music_statistics` of the split's songs, decoded from the cache's ids (the model's own view of them)."""
    from .metrics import music_statistics, skipped_token_share

    rows = []
    for song in split_songs(cache, split, max_files):
        midi, report = tokenizer.decode_with_report(cache.song_tokens(song))
        row = dict(music_statistics(midi))
        row["skipped_share"] = skipped_token_share(report.skipped, report.n_tokens)
        rows.append(row)
    return rows


def generated_midi_files(folder: str | Path) -> list[Path]:
    """The .mid/.midi files under `folder` (sorted); a UserError when there are none."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".mid", ".midi") and p.is_file())
    if not files:
        raise UserError(f"generated={folder}: no .mid/.midi files found")
    return files


def generated_statistics(folder: str | Path, skipped: list[tuple[str, str]] | None = None,
                         ) -> tuple[list[dict[str, float]], list[str]]:
    """(`music_statistics` of every readable .mid/.midi under `folder`, their relative paths).

    A file that cannot be read is left out and reported: appended to `skipped` as (relative path, reason);
    only when no file at all can be read is it a UserError.
    `skipped_share` comes from the `.json` generate.py writes beside each MIDI (`skipped` / `tokens`). A MIDI
    file does not carry the ids it was decoded from, and re-encoding it yields grammatical ids by construction
    (skip share 0 whatever the model did), so without that .json the share is NaN (shown as n/a).
    """
    from miditoolkit import MidiFile

    from .metrics import music_statistics, skipped_token_share

    folder = Path(folder)
    files = generated_midi_files(folder)
    rows, names, failed = [], [], []
    for path in files:
        name = path.relative_to(folder).as_posix()
        try:
            midi = MidiFile(str(path))
            row = dict(music_statistics(midi))
        except Exception as exc:  # noqa: BLE001 - a damaged file is skipped and reported, not a crash of all the statistics
            failed.append((name, f"cannot be read as MIDI ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})"))
            continue
        row["skipped_share"] = float("nan")
        meta = path.with_suffix(".json")
        if meta.is_file():
            try:
                info = json.loads(meta.read_text())
                row["skipped_share"] = skipped_token_share(int(info["skipped"]), int(info["tokens"]))
            except (ValueError, KeyError, TypeError):
                pass
        rows.append(row)
        names.append(name)
    if skipped is not None:
        skipped.extend(failed)
    if not rows:
        first = f" ({failed[0][0]}: {failed[0][1]})" if failed else ""
        raise UserError(f"generated={folder}: none of its {len(files)} MIDI file(s) can be read{first}")
    return rows, names


def music_statistics_report(generated: str | Path, cache: Any, split: str, tokenizer: Any,
                            max_files: int | None = None,
                            precomputed: tuple[list[dict[str, float]], list[str], list[tuple[str, str]]] | None = None,
                            ) -> tuple[str, dict[str, Any]]:
    """(side-by-side table, JSON payload) of generated pieces vs the split's songs.

    `precomputed` = (rows, names, skipped) from `generated_statistics`, when the caller read the files already.
    """
    from .metrics import aggregate, format_comparison_table

    if precomputed is None:
        skipped: list[tuple[str, str]] = []
        gen, names = generated_statistics(generated, skipped)
    else:
        gen, names, skipped = precomputed
    ref = reference_statistics(cache, split, tokenizer, max_files)
    table = format_comparison_table(gen, ref, labels=(f"generated (n={len(gen)})", f"{split} (n={len(ref)})"))
    payload = {
        "generated_dir": str(generated), "split": split,
        "skipped_share_note": "generated: from generate.py's .json beside each MIDI (NaN without it); "
                              f"{split}: tokens the grammar skipped when decoding the cached ids",
        "generated_mean_std": {k: list(v) for k, v in aggregate(gen).items()},
        "reference_mean_std": {k: list(v) for k, v in aggregate(ref).items()},
        "generated": [{"file": n, **r} for n, r in zip(names, gen)],
        "skipped_files": [{"file": n, "reason": r} for n, r in skipped],
        "reference": ref,
    }
    return table, payload
