"""Infilling: regenerate 4 bars in the middle of POP909 test songs; do they fit, and is everything else kept?

    python -m benchmarks.infill [--checkpoint checkpoints/musicgen-small.pt] [--songs 20] [--bars 4] [--seed 1]
                                [--out benchmarks/results/infill.json]

For each POP909 test song (id % 20 == 0) in 2 or 4 beats with at least 40 four-beat bars, the gap is
``--bars`` four-beat bars from the middle of the song (at most bar 48, so a gap is reached within a few
thousand tokens):

1. **Likelihood, teacher-forced**: the NLL (nats per token) of the real bars of the gap given the bars before
   it alone, and given the kept bars after it shown first (what ``infill`` reads); the gain in percent.
2. **Joins**: each variant fills every gap once (``musicgen.generation.infill``); the filled bars' distances to
   their neighbours (key, register, density, groove: ``musicgen.evaluation.infill``) next to the real bars'
   distances, as a ratio of means (target <= 1.3). Variants: ``ranked`` (the default: the bars after shown, 4
   candidates, the one leading best into the kept bars kept), ``one`` (1 candidate), ``before only`` (the bars
   before alone, 4 candidates ranked).
3. **Kept bars**: the share of filled pieces whose kept notes, tempo map and metre events, once the piece is
   written to a file and read back, are exactly the original file's (must be 100%), and whether every filled
   gap holds the asked number of bars.

Prints tables and writes the JSON.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from benchmarks.common import RESULTS, print_table, shared_data, write_results
from musicgen.data.sources import read_pop909_metres
from musicgen.evaluation.infill import JOIN_KEYS, kept_identical, piece_join
from musicgen.generation import GenerateOptions
from musicgen.generation.bar_ranges import BarRange
from musicgen.data.beat_phase import align_beats, corpus_aligns_beats
from musicgen.generation.infill import (PieceBars, fill_gaps, gap_context, gap_tokens, load_piece, plan_gaps, splice,
                                        trained_for_infill)
from musicgen.generation.prompt import resolve_time_signature
from musicgen.inference import load_model

#: the variants of section 2: (name, candidates, show the bars after)
VARIANTS = (("ranked", 4, True), ("one", 1, True), ("before only", 4, False))
MAX_GAP_START = 48  # four-beat bars


def test_songs() -> list[tuple[int, int]]:
    """(song id, song bars per four-beat bar) of the POP909 test songs in 2 or 4 beats."""
    root = shared_data() / "pop909"
    metres = read_pop909_metres(root)
    return [(song, 4 // metres.get(song, (4, 4))[0]) for song in range(20, 910, 20)
            if metres.get(song, (4, 4))[0] in (2, 4) and (root / f"{song:03d}.mid").is_file()]


def written(midi):
    """``midi`` as a file would give it back (written and read again): what a musician opens."""
    import tempfile

    import miditoolkit

    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/filled.mid"
        midi.dump(path)
        return miditoolkit.MidiFile(path)


def nll(model, context: list[int], middle: list[int]) -> float:
    x = torch.tensor(context + middle).unsqueeze(0)
    with torch.inference_mode():
        logits = model(x[:, :-1], generator=torch.Generator().manual_seed(0))[0]
    return float(F.cross_entropy(logits[len(context) - 1:].float(), x[0, len(context):]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/musicgen-small.pt")
    p.add_argument("--songs", type=int, default=20)
    p.add_argument("--bars", type=int, default=4, help="four-beat bars regenerated per song")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS / "infill.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    root = shared_data() / "pop909"
    if not root.is_dir():
        raise SystemExit(f"error: {root} not found: set MUSICGEN_SHARED_DATA")
    loaded = load_model(args.checkpoint, "cpu")
    model, tokenizer = loaded.model, loaded.tokenizer
    separated = trained_for_infill(loaded.checkpoint.config)  # the fill-in-the-middle layout it was trained on
    align = corpus_aligns_beats(loaded.checkpoint.config)  # the songs as its training saw them
    rows: list[dict] = []
    began = time.perf_counter()
    bar = tqdm(total=args.songs, unit="song", desc="infill benchmark", dynamic_ncols=True)
    for song, per_bar in test_songs():
        if len(rows) >= args.songs:
            break
        path = root / f"{song:03d}.mid"
        midi, piece = load_piece(path, tokenizer, "index")
        if align:
            align_beats(midi)
            piece = PieceBars.from_midi(tokenizer, midi, resolve_time_signature("index", path))
        four_beat_bars = len(piece.bars) // per_bar
        if four_beat_bars < 40:
            continue
        lo4 = min(four_beat_bars // 2, MAX_GAP_START)  # gap in four-beat bars: lo4 .. lo4 + bars - 1
        r = BarRange(lo4 * per_bar + 1, (lo4 + args.bars) * per_bar)
        gaps = plan_gaps(piece, (r,), path)
        gap = gaps[0]
        real = gap_tokens(tokenizer, piece, gap)
        row = {"song": song, "bars": str(r), "tokens": len(real),
               "nll_before": nll(model, gap_context(tokenizer, piece, gap, {}, show_after=False), real),
               "nll_both": nll(model, gap_context(tokenizer, piece, gap, {}, separated=separated), real),
               "real": piece_join(midi, lo4, lo4 + args.bars)}
        tps = (midi.ticks_per_beat or 480) / tokenizer.config.steps_per_quarter
        lo_tick = int(round(piece.starts[gap.first] * tps))
        hi_tick = int(round((piece.starts[gap.end - 1] + piece.lengths[gap.end - 1]) * tps))
        for name, candidates, show_after in VARIANTS:
            options = GenerateOptions(prompt=str(path), prompt_time_signature="index", infill=str(r),
                                      infill_candidates=candidates, progress=False)
            replaced, chosen = fill_gaps(model, tokenizer, piece, gaps, (r,), options, args.seed, 0,
                                         torch.device("cpu"), show_after=show_after, separated=separated)
            filled, notes = splice(midi, tokenizer, piece, gaps, replaced)
            row[name] = {**piece_join(filled, lo4, lo4 + args.bars), "notes": notes[0],
                         "kept_identical": kept_identical(midi, written(filled), [(lo_tick, hi_tick)], tps),
                         "bars_exact": sum(1 for i in replaced if gap.first <= i < gap.end) == r.count,
                         "suffix_logprob": chosen[0].scores}
        rows.append(row)
        bar.update(1)
    bar.close()

    def mean(key: str, sub: str | None = None) -> float:
        values = [(r[sub][key] if sub else r[key]) for r in rows]
        values = [float(v) for v in values if v == v]
        return round(float(np.mean(values)), 4) if values else float("nan")

    weights = np.asarray([r["tokens"] for r in rows], dtype=float)
    before = float(np.average([r["nll_before"] for r in rows], weights=weights))
    both = float(np.average([r["nll_both"] for r in rows], weights=weights))
    summary = {"songs": len(rows), "nll_before": round(before, 4), "nll_both": round(both, 4),
               "nll_gain_percent": round(100 * (1 - both / before), 2),
               "real": {k: mean(k, "real") for k in JOIN_KEYS}}
    for name, _, _ in VARIANTS:
        summary[name] = {k: mean(k, name) for k in JOIN_KEYS}
        summary[name]["ratio_to_real"] = {k: round(summary[name][k] / summary["real"][k], 3) for k in JOIN_KEYS}
        summary[name]["kept_identical_share"] = float(np.mean([r[name]["kept_identical"] for r in rows]))
        summary[name]["bars_exact_share"] = float(np.mean([r[name]["bars_exact"] for r in rows]))
        summary[name]["notes_per_gap"] = mean("notes", name)
    summary["wall_s"] = round(time.perf_counter() - began, 1)

    print(f"\nreal gap bars, NLL per token ({len(rows)} POP909 test songs, {args.bars} four-beat bars each)")
    print_table(["given", "NLL"], [["the bars before", summary["nll_before"]],
                                   ["the bars after shown first, then the bars before", summary["nll_both"]],
                                   ["gain", f"{summary['nll_gain_percent']}%"]])
    print("\ndistance of the gap's bars to their 4 neighbours on each side (mean; ratio to the real bars')")
    print_table(["gap filled by", *JOIN_KEYS, "kept identical", "bars exact", "notes"],
                [["the real bars", *[summary["real"][k] for k in JOIN_KEYS], "", "", ""]]
                + [[name, *[f"{summary[name][k]:.3f} ({summary[name]['ratio_to_real'][k]:.2f}x)" for k in JOIN_KEYS],
                    f"{summary[name]['kept_identical_share']:.0%}", f"{summary[name]['bars_exact_share']:.0%}",
                    summary[name]["notes_per_gap"]] for name, _, _ in VARIANTS])
    write_results("infill", {"checkpoint": args.checkpoint, "bars": args.bars, "seed": args.seed,
                             "fim_layout": separated, "aligned_songs": align,
                             "summary": summary, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
