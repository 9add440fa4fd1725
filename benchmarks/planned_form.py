"""A planned form: do sections with the same letter come back, and varied rather than pasted?

    python -m benchmarks.planned_form [--checkpoint checkpoints/musicgen-small.pt] [--form "A8 B8 A8 B8 C8 A8"]
                                      [--pieces 4] [--recall 0 1.5 2 3 6] [--prompt-form "A8 B8 A8"]
                                      [--out benchmarks/results/planned_form.json]

For each setting, ``--pieces`` pieces (seeds 1..N) at default decoding; each piece's bars (its own metre) are
compared section to section (``musicgen.evaluation.form.section_similarity``): bar i of a section against bar
i of every other section, the mean similarity over pairs with the same letter and with different letters,
and the share of same-letter bar pairs that are identical copies. Rows: unplanned pieces of the same length
cut into the same sections (the control: what chance gives), then the plan with each ``form_recall`` (0 =
the returning section only resumes the model's state; more = the recall head is pointed at the first
occurrence). Then the same with a prompt as section A (``--prompt-form``, the first 8 bars of POP909 test songs
020, 040, 060, 080 read with their index.tsv metre): does the piece come back to the musician's own material?
Prints the tables and writes the JSON.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmarks.common import RESULTS, print_table, shared_data, write_results
from musicgen.evaluation.form import own_bars, section_similarity
from musicgen.generation import generate
from musicgen.generation.form_plan import parse_form

KEYS = ("same", "different", "exact_share")


def sections_of(form: str) -> list[tuple[str, int, int]]:
    out, bar = [], 0
    for s in parse_form(form):
        out.append((s.letter, bar, s.bars))
        bar += s.bars
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/musicgen-small.pt")
    p.add_argument("--form", default="A8 B8 A8 B8 C8 A8")
    p.add_argument("--pieces", type=int, default=4)
    p.add_argument("--recall", type=float, nargs="*", default=[0.0, 1.5, 2.0, 3.0, 6.0])
    p.add_argument("--prompt-form", default="A8 B8 A8", help="the form with a prompt as A ('' = skip)")
    p.add_argument("--out", default=str(RESULTS / "planned_form.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    sections = sections_of(args.form)
    bars = sum(n for _, _, n in sections)
    settings = [("unplanned", {"bars": bars, "allow_eos": False})] + [
        (f"form_recall={r:g}", {"form": args.form, "form_recall": r}) for r in args.recall]
    rows, began = {}, time.perf_counter()
    progress = tqdm(total=len(settings) * args.pieces, unit="piece", desc="planned form", dynamic_ncols=True)
    for name, options in settings:
        per_piece = []
        for seed in range(1, args.pieces + 1):
            piece = generate(args.checkpoint, seed=seed, log=None, progress=False, **options)[0]
            per_piece.append(section_similarity(own_bars(piece.midi, bars), sections))
            progress.update(1)
        rows[name] = {k: round(float(np.nanmean([r[k] for r in per_piece])), 3) for k in KEYS}
        rows[name]["pieces"] = per_piece
    progress.close()
    print(f"\n{args.form}: bar i of a section vs bar i of the others ({args.pieces} pieces per row, means)")
    print_table(["", "same letter", "different letters", "identical same-letter bars"],
                [[name, r["same"], r["different"], f"{r['exact_share']:.0%}"] for name, r in rows.items()])
    prompted = prompted_rows(args) if args.prompt_form else {}
    if prompted:
        print(f"\n{args.prompt_form} with the first {prompt_bars(args.prompt_form)} bars of a POP909 test song as A")
        print_table(["", "same letter", "different letters", "identical same-letter bars"],
                    [[name, r["same"], r["different"], f"{r['exact_share']:.0%}"] for name, r in prompted.items()])
    write_results("planned_form", {"checkpoint": args.checkpoint, "form": args.form, "pieces": args.pieces,
                                   "rows": rows, "prompt_form": args.prompt_form, "prompted": prompted,
                                   "wall_s": round(time.perf_counter() - began, 1)}, args.out)


def prompt_bars(form: str) -> int:
    return parse_form(form)[0].bars


def prompted_rows(args: argparse.Namespace) -> dict:
    """The plan with the first bars of four POP909 test songs as section A, per ``form_recall``."""
    sections = sections_of(args.prompt_form)
    bars = sum(n for _, _, n in sections)
    songs = [shared_data() / "pop909" / f"{i:03d}.mid" for i in (20, 40, 60, 80)]
    out = {}
    for recall in args.recall:
        per_piece = []
        for song in songs:
            piece = generate(args.checkpoint, song, prompt_bars=prompt_bars(args.prompt_form),
                             prompt_time_signature="index", form=args.prompt_form, form_recall=recall, seed=1,
                             log=None, progress=False)[0]
            per_piece.append(section_similarity(own_bars(piece.midi, bars), sections))
        out[f"form_recall={recall:g}"] = {k: round(float(np.nanmean([r[k] for r in per_piece])), 3) for k in KEYS}
        out[f"form_recall={recall:g}"]["pieces"] = per_piece
    return out


if __name__ == "__main__":
    main()
