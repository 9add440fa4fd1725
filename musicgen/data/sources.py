"""Which MIDI files make up a corpus, which metre each one is read with, and which split it belongs to."""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ..tokenizer import find_midi_files, parse_time_signature

if TYPE_CHECKING:
    from .options import DataOptions

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class SourceFile:
    path: Path
    relpath: str
    split: str
    time_signature: tuple[int, int] | None  # None = use the file's own time-signature events
    align_beats: bool = False  # shift the file so that its beats fall on the grid (musicgen.data.beat_phase)


def pop909_split(song_id: int) -> str:
    """POP909's fixed split: id % 20 == 0 -> test, id % 20 == 1 -> valid (45 + 46 songs), else train."""
    if song_id % 20 == 0:
        return "test"
    if song_id % 20 == 1:
        return "valid"
    return "train"


def hash_split(relpath: str) -> str:
    """A split that never changes when files are added: 5% test, 5% valid by a hash of the relative path."""
    bucket = int(hashlib.sha1(relpath.encode()).hexdigest()[:8], 16) % 20
    return pop909_split(bucket)


def read_pop909_metres(root: Path) -> dict[int, tuple[int, int]]:
    """Song id -> metre from POP909's index.tsv (num_beats_per_measure beats of num_quavers_per_beat quavers)."""
    index = root / "index.tsv"
    if not index.exists():
        raise FileNotFoundError(
            f"{index}: missing. POP909's own time signatures are wrong, so its metre comes from index.tsv; "
            "set data.time_signature=file (the files' events) or e.g. data.time_signature=4/4 instead")
    metres = {}
    with index.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        missing = {"song_id", "num_beats_per_measure"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{index}: no column {', '.join(sorted(missing))} in its header")
        for row in reader:
            where = f"{index}, line {reader.line_num} (song {(row.get('song_id') or '?').strip()})"
            try:  # a metre of 0 once became 4/4 silently; 'x' a bare `invalid literal for int()`
                song_id = int(str(row["song_id"]).strip())
                beats = int(str(row["num_beats_per_measure"]).strip())
                quavers = int(str(row.get("num_quavers_per_beat") or 2).strip())
            except ValueError:
                raise ValueError(f"{where}: song_id, num_beats_per_measure and num_quavers_per_beat must be whole "
                                 f"numbers, got {row.get('song_id')!r}, {row.get('num_beats_per_measure')!r}, "
                                 f"{row.get('num_quavers_per_beat')!r}") from None
            if not 1 <= beats <= 32 or not 1 <= quavers <= 4:
                raise ValueError(f"{where}: num_beats_per_measure={beats} must be in 1..32 and "
                                 f"num_quavers_per_beat={quavers} in 1..4")
            # A beat of 2 quavers is a quarter note (2/4, 3/4); a beat of 3 quavers a dotted quarter (6/8).
            metres[song_id] = (beats, 4) if quavers == 2 else (beats * quavers, 8)
    return metres


def readable_name(relpath: str) -> str | None:
    """None when `relpath` is valid UTF-8, else how to show it (undecodable bytes as \\xNN)."""
    try:
        relpath.encode("utf-8")
    except UnicodeEncodeError:
        return relpath.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return None


def list_sources(data: "DataOptions | Mapping[str, Any]",
                 skipped: list[tuple[str, str]] | None = None) -> list[SourceFile]:
    """The corpus described by a data config (see conf/data/*.yaml), sorted by relative path.

    A file whose name is not valid UTF-8 (it could not be stored in the cache's manifest) is left out and, with
    `skipped`, listed there as (its name with \\xNN escapes, the reason), so one such file never stops a corpus.
    """
    from .options import data_options

    data = data_options(data)
    root = Path(data.root)
    if not root.exists():
        hint = " (or set data.download=true)" if data.name == "pop909" else ""
        raise FileNotFoundError(f"data.root={root}: no such folder{hint}")
    files = find_midi_files(root)
    if not files:
        raise FileNotFoundError(f"data.root={root}: no MIDI files (.mid/.midi/.kar) found")
    if data.max_files is not None:
        files = files[:data.max_files]
    ts_option, align, split_rule = data.time_signature, data.align_beats, data.split
    metres: dict[int, tuple[int, int]] = {}
    forced: tuple[int, int] | None = None
    if ts_option == "index":
        metres = read_pop909_metres(root)
    elif ts_option != "file":
        forced = parse_time_signature(ts_option)
    held_out: set[str] = set()
    if split_rule == "folder":  # a small folder of one's own: a fixed share of its files validates (at least one)
        fraction = data.valid_fraction
        names = [p.relative_to(root).as_posix() if p != root else p.name for p in files]
        ranked = sorted(names, key=lambda n: hashlib.sha1(n.encode("utf-8", "surrogateescape")).hexdigest())
        count = max(1, round(fraction * len(ranked))) if len(ranked) >= 2 else 0
        held_out = set(ranked[:count])
    sources = []
    for path in files:
        relpath = path.relative_to(root).as_posix() if path != root else path.name
        shown = readable_name(relpath)
        if shown is not None:
            if skipped is not None:
                skipped.append((shown, "its file name is not valid UTF-8 (rename the file)"))
            continue
        song_id = int(path.stem) if path.stem.isdigit() else None
        if split_rule == "pop909":
            if song_id is None:
                raise ValueError(f"{path}: data.split=pop909 needs files named by song id (001.mid ...)")
            split = pop909_split(song_id)
        elif split_rule == "hash":
            split = hash_split(relpath)
        elif split_rule == "folder":
            split = "valid" if relpath in held_out else "train"
        else:
            raise ValueError(f"data.split={split_rule}: unknown (use pop909, hash or folder)")
        metre = forced
        if ts_option == "index":
            metre = metres.get(song_id) if song_id is not None else None
            if metre is None:
                raise ValueError(f"{path}: no row for song {song_id} in {root / 'index.tsv'}")
        sources.append(SourceFile(path, relpath, split, metre, align))
    return sources
