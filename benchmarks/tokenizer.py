"""Whole-POP909 tokenization: time, tokens per file/note, round-trip fidelity; MidiTok's REMI side by side.

    python -m benchmarks.tokenizer [--root DIR] [--workers 2] [--max-files N] [--no-miditok]

Fidelity is measured at the note level against the tokenizer's own quantization (`quantize`): recall =
share of quantized notes that come back (same pitch, onset step, duration bin, velocity bin, program),
precision = share of decoded notes that were in the input; a file is exact when both are 100% and tempo
and metre maps match. For MidiTok (installed only in the benchmark's environment, e.g.
`pip install miditok`) the same note-level recall/precision is computed on (pitch, onset on the 16th grid),
since its duration/velocity bins differ from ours; its time covers parse + encode (+ decode for fidelity,
timed separately), like ours.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from collections import Counter
from pathlib import Path


from benchmarks.common import print_table, shared_data, write_results
from musicgen.data.sources import read_pop909_metres
from musicgen.tokenizer import REMITokenizer, load_midi
from musicgen.tokenizer.check import compare_scores

_METRES: dict[int, tuple[int, int]] = {}
_TOK: REMITokenizer | None = None


def _ours_encode(path: str) -> tuple[int, int]:
    global _TOK
    _TOK = _TOK or REMITokenizer()
    midi = load_midi(path)
    ids = _TOK.encode(midi, _METRES[int(Path(path).stem)])
    return len(ids), sum(len(i.notes) for i in midi.instruments)


def _ours_fidelity(path: str) -> tuple[int, int, int, bool]:
    """(quantized notes, recovered notes, decoded notes, exact)."""
    global _TOK
    _TOK = _TOK or REMITokenizer()
    score, _ = _TOK.quantize(load_midi(path), _METRES[int(Path(path).stem)])
    back, _ = _TOK.quantize(_TOK.decode(_TOK.encode_score(score)))
    missing, extra, tempo_same, metre_same = compare_scores(score, back)
    n_in, n_out = len(score.notes), len(back.notes)
    return n_in, n_in - missing, n_out, missing == 0 and extra == 0 and tempo_same and metre_same


_MT = None


def _miditok_tokenizer():
    global _MT
    if _MT is None:
        import miditok

        _MT = miditok.REMI(miditok.TokenizerConfig(num_velocities=32, use_chords=True, use_tempos=True,
                                                   beat_res={(0, 4): 4, (4, 12): 4},
                                                   use_time_signatures=True, use_programs=False))
    return _MT


def _miditok_encode(path: str) -> tuple[int, int]:
    from symusic import Score

    tok = _miditok_tokenizer()
    score = Score(path)
    seq = tok.encode(score)
    seqs = seq if isinstance(seq, list) else [seq]
    return sum(len(s.ids) for s in seqs), sum(len(t.notes) for t in score.tracks)


def _miditok_fidelity(path: str) -> tuple[int, int, int, bool]:
    from symusic import Score

    tok = _miditok_tokenizer()
    score = Score(path)
    decoded = tok.decode(tok.encode(score))
    def grid_notes(s):
        step = s.ticks_per_quarter / 4
        return Counter((n.pitch, int(n.time / step + 0.5)) for t in s.tracks for n in t.notes)
    want, got = grid_notes(score), grid_notes(decoded)
    recovered = sum((want & got).values())
    n_in, n_out = sum(want.values()), sum(got.values())
    return n_in, recovered, n_out, recovered == n_in == n_out


def _run(pool_size: int, func, files: list[str]) -> tuple[float, list]:
    t0 = time.perf_counter()
    if pool_size > 1:
        with mp.get_context("fork").Pool(pool_size, initializer=_init, initargs=(_METRES,)) as pool:
            out = pool.map(func, files, chunksize=4)
    else:
        out = [func(f) for f in files]
    return time.perf_counter() - t0, out


def _init(metres: dict) -> None:
    _METRES.update(metres)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=shared_data() / "pop909")
    parser.add_argument("--workers", type=int, default=mp.cpu_count())
    parser.add_argument("--max-files", type=int, default=None)
    parser.add_argument("--no-miditok", action="store_true")
    args = parser.parse_args()
    files = sorted(str(p) for p in args.root.glob("*.mid"))[: args.max_files]
    _METRES.update(read_pop909_metres(args.root))
    rows, results = [], {"files": len(files), "workers": args.workers}

    systems = [("musicgen REMI", _ours_encode, _ours_fidelity)]
    if not args.no_miditok:
        try:
            import miditok  # noqa: F401

            from importlib.metadata import version

            systems.append((f"MidiTok REMI {version('miditok')}", _miditok_encode, _miditok_fidelity))
        except ImportError:
            print("MidiTok not installed in this environment: its row is skipped (pip install miditok)")
    for name, encode, fidelity in systems:
        seconds, counts = _run(args.workers, encode, files)
        _, fid = _run(args.workers, fidelity, files)
        tokens, notes = sum(c[0] for c in counts), sum(c[1] for c in counts)
        q_in, recovered, q_out = sum(f[0] for f in fid), sum(f[1] for f in fid), sum(f[2] for f in fid)
        exact = sum(f[3] for f in fid) / len(fid)
        entry = {"encode_seconds": seconds, "tokens": tokens, "notes": notes, "tokens_per_file": tokens / len(files),
                 "tokens_per_note": tokens / max(notes, 1), "recall": recovered / max(q_in, 1),
                 "precision": recovered / max(q_out, 1), "exact_files": exact}
        results[name] = entry
        rows.append([name, seconds, entry["tokens_per_file"], entry["tokens_per_note"], entry["recall"],
                     entry["precision"], exact])
    if len(systems) == 2:
        ours, theirs = (results[s[0]]["encode_seconds"] for s in systems)
        results["time_ratio_miditok_over_ours"] = theirs / ours
        print(f"time ratio MidiTok / musicgen: {theirs / ours:.2f}")
    print(f"POP909 tokenization, {len(files)} files, {args.workers} worker processes (wall seconds):")
    results["table"] = print_table(["tokenizer", "encode s", "tokens/file", "tokens/note", "note recall",
                                    "note precision", "exact files"], rows)
    write_results("tokenizer", results)


if __name__ == "__main__":
    main()
