"""`python -m musicgen.tokenizer check PATH...`: does my MIDI survive the tokenizer?

For each file: notes in, notes back after `decode(encode(...))`, compared with the tokenizer's own
quantization of the input; `exact`, or what was lost; or the one-line reason a file cannot be read.
Exit code 0 when no readable file is lossy, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

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
               out_dir: Path | None = None) -> RoundTrip:
    """Quantize, encode, decode and re-quantize one file (raises MidiReadError for unreadable files)."""
    midi = load_midi(path)
    score, report = tokenizer.quantize(midi, time_signature)
    decoded = tokenizer.decode(tokenizer.encode_score(score))
    back, _ = tokenizer.quantize(decoded)
    missing, extra, tempo_same, metre_same = compare_scores(score, back)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        decoded.dump(str(out_dir / (path.stem + ".mid")))
    notes_back = sum(len(t.notes) for t in decoded.instruments)
    return RoundTrip(report.notes_in, notes_back, missing, extra, tempo_same, metre_same, report.losses())


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m musicgen.tokenizer check",
                                     description="Round-trip MIDI files through the REMI tokenizer and report.")
    parser.add_argument("paths", nargs="+", type=Path, help="MIDI files or folders (searched recursively)")
    parser.add_argument("--out", type=Path, default=None, help="also write each round trip as OUT/<name>.mid")
    parser.add_argument("--time-signature", default=None, help="force a metre, e.g. 2/4 (default: the file's own)")
    parser.add_argument("--grid", type=int, default=16, help="grid steps per whole note (default 16)")
    parser.add_argument("--no-programs", action="store_true", help="merge all programs into one (programs=false)")
    args = parser.parse_args(argv)
    try:
        time_signature = parse_time_signature(args.time_signature) if args.time_signature else None
        tokenizer = REMITokenizer({"grid": args.grid, "programs": not args.no_programs})
    except ValueError as exc:
        parser.error(str(exc))
    files: list[Path] = []
    for path in args.paths:
        if not path.exists():
            parser.error(f"{path}: no such file or folder")
        files += find_midi_files(path)
    exact = lossy = unreadable = 0
    for path in files:
        try:
            result = round_trip(tokenizer, path, time_signature, args.out)
        except MidiReadError as exc:
            unreadable += 1
            print(f"{path}: UNREADABLE: {exc.cause}", flush=True)
            continue
        if result.exact:
            exact += 1
        else:
            lossy += 1
        print(describe(str(path), result), flush=True)
    print(f"checked {len(files)} files: {exact} exact, {lossy} lossy, {unreadable} unreadable")
    return 1 if lossy else 0


if __name__ == "__main__":
    sys.exit(main())
