"""`python -m musicgen.tokenizer check PATH...`: does my MIDI survive the tokenizer?

For each file: notes in, notes back after `decode(encode(...))`, compared with the tokenizer's own
quantization of the input; `exact`, or what was lost; or the one-line reason a file cannot be read.
Exit code 0 when no readable file is lossy, 1 otherwise. A bad argument, an --out folder that cannot be
written, or paths holding no MIDI file at all are one `error: ...` line and exit code 1 (checked before any
file is read). Round trips go to OUT/<path relative to the folder given>, so equal names never collide.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..config import UserError, check_writable_dir, make_dir, report_user_errors
from .errors import MidiReadError
from .midi_io import find_midi_files, load_midi
from .remi import REMITokenizer
from .score import Score, parse_time_signature


@dataclass
class RoundTrip:
    """Result of one file's round trip, compared at the level of quantized notes, tempi and metre."""

    notes_in: int
    notes_back: int
    missing: int
    extra: int
    tempo_same: bool
    metre_same: bool
    dropped: list[str]

    @property
    def exact(self) -> bool:
        return not self.missing and not self.extra and self.tempo_same and self.metre_same


def compare_scores(expected: Score, actual: Score) -> tuple[int, int, bool, bool]:
    """(notes missing from `actual`, extra notes in `actual`, tempo maps equal, metres equal)."""
    want, got = Counter(expected.notes), Counter(actual.notes)
    missing = sum((want - got).values())
    extra = sum((got - want).values())
    return missing, extra, expected.tempos == actual.tempos, expected.time_signatures == actual.time_signatures


def round_trip(tokenizer: REMITokenizer, path: Path, time_signature: tuple[int, int] | None = None,
               out_dir: Path | None = None, out_name: str | None = None) -> RoundTrip:
    """Quantize, encode, decode and re-quantize one file (raises MidiReadError for unreadable files).

    With `out_dir`, the decoded round trip is written to `out_dir / out_name` (default: the file's own name).
    """
    midi = load_midi(path)
    score, report = tokenizer.quantize(midi, time_signature)
    decoded = tokenizer.decode(tokenizer.encode_score(score))
    back, _ = tokenizer.quantize(decoded)
    missing, extra, tempo_same, metre_same = compare_scores(score, back)
    if out_dir is not None:
        target = out_dir / (out_name or path.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        decoded.dump(str(target))
    notes_back = sum(len(t.notes) for t in decoded.instruments)
    return RoundTrip(report.notes_in, notes_back, missing, extra, tempo_same, metre_same, report.losses())


def output_names(inputs: list[tuple[Path, Path | None]]) -> list[str]:
    """A distinct --out name per (file, folder argument it was found under): the file's path relative to that
    folder (or its own name), suffix kept, so a/song.mid, b/song.mid and song.midi never overwrite one another;
    a name taken twice (the same file name given from two places) gets _2, _3 ... before its suffix."""
    names: list[str] = []
    taken: set[str] = set()
    for path, folder in inputs:
        name = path.relative_to(folder).as_posix() if folder is not None else path.name
        candidate, n = name, 1
        while candidate.lower() in taken:
            n += 1
            stem, dot, suffix = name.rpartition(".")
            candidate = f"{stem}_{n}.{suffix}" if dot else f"{name}_{n}"
        taken.add(candidate.lower())
        names.append(candidate)
    return names


def describe(name: str, result: RoundTrip) -> str:
    line = f"{name}: {result.notes_in} notes in, {result.notes_back} back, "
    if result.exact:
        line += "exact"
    else:
        problems = []
        if result.missing:
            problems.append(f"{result.missing} notes lost")
        if result.extra:
            problems.append(f"{result.extra} notes changed or added")
        if not result.tempo_same:
            problems.append("tempo map differs")
        if not result.metre_same:
            problems.append("metre differs")
        line += "LOSSY: " + ", ".join(problems)
    if result.dropped:
        line += f" (quantize dropped: {'; '.join(result.dropped)})"
    return line


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    """The command; a bad argument, an unwritable --out or no MIDI file at all is one `error: ...` line, exit 1."""
    parser = argparse.ArgumentParser(prog="python -m musicgen.tokenizer check",
                                     description="Round-trip MIDI files through the REMI tokenizer and report.")
    parser.add_argument("paths", nargs="+", type=Path, help="MIDI files or folders (searched recursively)")
    parser.add_argument("--out", type=Path, default=None,
                        help="also write each round trip under OUT/ (its path relative to the folder given)")
    parser.add_argument("--time-signature", default=None, help="force a metre, e.g. 2/4 (default: the file's own)")
    parser.add_argument("--grid", type=int, default=16, help="grid steps per whole note (default 16)")
    parser.add_argument("--no-programs", action="store_true", help="merge all programs into one (programs=false)")
    args = parser.parse_args(argv)
    try:
        tokenizer = REMITokenizer({"grid": args.grid, "programs": not args.no_programs})
        time_signature = parse_time_signature(args.time_signature) if args.time_signature else None
    except ValueError as exc:
        raise UserError(f"{exc}") from None
    if time_signature is not None and time_signature not in tokenizer.vocab.time_signatures:
        raise UserError(f"--time-signature {args.time_signature}: a grid of {args.grid} steps per whole note cannot "
                        "represent that metre (a bar must be a whole number of steps, at most four whole notes)")
    inputs: list[tuple[Path, Path | None]] = []
    for path in args.paths:
        if not path.exists():
            raise UserError(f"{path}: no such file or folder")
        folder = path if path.is_dir() else None
        inputs += [(f, folder) for f in find_midi_files(path)]
    if not inputs:
        raise UserError(f"no MIDI files (.mid/.midi/.kar) in {', '.join(str(p) for p in args.paths)}: nothing checked")
    if args.out is not None:  # now, not at the first file
        check_writable_dir(args.out, "--out")
        make_dir(args.out, "--out")
    names = output_names(inputs)
    exact = lossy = unreadable = 0
    for (path, _), name in zip(inputs, names):
        try:
            result = round_trip(tokenizer, path, time_signature, args.out, name)
        except MidiReadError as exc:
            unreadable += 1
            print(f"{path}: UNREADABLE: {exc.cause}", flush=True)
            continue
        except OSError as exc:  # writing the round trip under --out
            raise UserError(f"--out {args.out}: cannot write {name} ({exc.strerror or exc})") from None
        if result.exact:
            exact += 1
        else:
            lossy += 1
        line = describe(str(path), result)
        if args.out is not None:
            line += f" -> {args.out / name}"
        print(line, flush=True)
    print(f"checked {len(inputs)} files: {exact} exact, {lossy} lossy, {unreadable} unreadable")
    return 1 if lossy else 0


if __name__ == "__main__":
    sys.exit(main())
