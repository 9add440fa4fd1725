"""Music with form: do songs, the model's pieces and its continuations restate, and does the model recall?

    python -m benchmarks.form [--checkpoint checkpoints/musicgen-small.pt] [--pieces 8] [--bars 64]
                              [--continuations 8] [--prompt-bars 16] [--recall] [--songs 12]
                              [--option tonal_memory=0 ...] [--out benchmarks/results/form.json]

Measures of musicgen/evaluation/form.py (four-beat bars, 16th grid; repeats at lags 4..64, repeated passages,
loops, structureness indicator SI, best-lag similarity, groove) and the teacher-forced recall of
musicgen/evaluation/recall.py.

1. **Reference** (always, ~30 s): POP909's 45 test songs (id % 20 == 0), tokenized and decoded as training
   sees them (metre from index.tsv), their first ``--bars`` four-beat bars; the same bars shuffled (the
   material kept, the order gone); random notes (each bar as many notes as the song's, at random cells and
   pitches in the song's range). Plus the songs' own continuation measures (prompt = first ``--prompt-bars``
   bars), the yardstick of section 2.
2. **Model** (``--pieces`` / ``--continuations`` > 0): ``--pieces`` unconditioned pieces (one batch, EOS off)
   and one continuation of each of the first ``--continuations`` test songs (prompt = their first
   ``--prompt-bars`` four-beat bars, continued to ``--bars``), measured on their first ``--bars`` four-beat
   bars, with default decoding and, if ``--option`` is given, again with those overrides. The shipped model
   writes 2/4 bars (POP909's index metre), so ``--bars`` four-beat bars are asked as ``2 * --bars`` of its bars
   (a model writing 4/4 just writes more than is measured); generation's 4,096-token safety cap is lifted to
   300 tokens per four-beat bar. The first piece's piano roll is written beside the JSON.
3. **Recall** (``--recall``): Pitch-token NLL in bars restating an earlier bar vs other bars, on the first
   ``--songs`` test songs (first 4,096 tokens, one forward pass).

Prints tables and writes the JSON (default benchmarks/results/form.json).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


from benchmarks.common import RESULTS, parse_options, print_table, sem, shared_data, write_results
from musicgen.config import UserError
from musicgen.evaluation.form import (FORM_KEYS, LAG_BUCKETS, analyse_bars, bar_sets,
                                      continuation_report, form_report, random_bars, shuffled_bars)
from musicgen.data.beat_phase import corpus_aligns_beats
from musicgen.evaluation.recall import song_ids
from musicgen.generation.prompt import load_prompt
from musicgen.tokenizer import MidiReadError, REMITokenizer

CONTINUATION_KEYS = ("density_ratio", "groove_prompt", "groove_within", "top_voice_shift", "top_gap_prompt",
                     "top_gap_continuation", "restates_prompt_share", "repeating_share", "passage_share")
LAG_KEYS = tuple(f"lag_{lo}-{hi}" for lo, hi in LAG_BUCKETS)
#: generation's default safety cap (4,096 tokens) stops a 64-bar piece at 31-50 bars: lift it to this many per bar
MAX_TOKENS_PER_BAR = 300


def _row(report: dict) -> dict:
    """A form report flattened for averaging (lag buckets as lag_4-7, ...)."""
    row = {k: report[k] for k in FORM_KEYS}
    row.update({f"lag_{k}": v for k, v in report["lag_share"].items()})
    row["best_lag"] = report["best_lag"]
    return row


def _summary(rows: list[dict], keys) -> dict:
    """Mean and standard error per key over rows (NaN-aware)."""
    out = {}
    for k in keys:
        x = np.asarray([r[k] for r in rows], dtype=float)
        out[k] = round(float(np.nanmean(x)), 4) if np.isfinite(x).any() else float("nan")
        out[k + "_sem"] = sem(list(x))
    return out


def pop909_test_songs() -> list[tuple[int, Path]]:
    root = shared_data() / "pop909"
    return [(i, root / f"{i:03d}.mid") for i in range(20, 910, 20) if (root / f"{i:03d}.mid").is_file()]


def load_songs(tokenizer: REMITokenizer, align: bool = False) -> dict[int, object]:
    """Song id -> the song as training sees it (tokenized with the index metre, its beats put on the grid when
    ``align``, decoded back to MIDI)."""
    songs = {}
    for song_id, path in pop909_test_songs():
        try:
            if align:
                songs[song_id] = tokenizer.decode(song_ids(path, tokenizer, "index", align=True))
            else:
                songs[song_id] = tokenizer.decode(load_prompt(path, tokenizer, time_signature="index").ids)
        except (UserError, MidiReadError) as exc:
            print(f"skipped {path.name}: {exc}")
    return songs


def reference(songs: dict, bars: int, prompt_bars: int) -> dict:
    rows = {"songs": [], "shuffled": [], "random": []}
    groove_32, cont = [], []
    for song_id, midi in songs.items():
        laid_out = bar_sets(midi, 0, bars)
        rows["songs"].append(_row(analyse_bars(laid_out)))
        rows["shuffled"].append(_row(analyse_bars(shuffled_bars(laid_out, seed=song_id))))
        rows["random"].append(_row(analyse_bars(random_bars(laid_out, seed=song_id))))
        groove_32.append(analyse_bars(bar_sets(midi, 0, 32))["groove"])
        cont.append(continuation_report(midi, prompt_bars, bars))
    keys = FORM_KEYS + LAG_KEYS + ("best_lag",)
    out = {name: _summary(r, keys) for name, r in rows.items()}
    out["songs"]["groove_first_32_bars"] = round(float(np.nanmean(groove_32)), 4)
    out["song_continuations"] = _summary(cont, CONTINUATION_KEYS)
    out["count"] = len(songs)
    out["per_song"] = {str(i): {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
                       for i, r in zip(songs, rows["songs"])}
    return out


def _four_beat_bars(midi) -> int:
    last = max((n.start for inst in midi.instruments for n in inst.notes), default=0)
    return int(last // (4 * midi.ticks_per_beat)) + 1


def free_pieces(checkpoint: str, count: int, bars: int, seed: int, options: dict, png: Path | None) -> dict:
    from musicgen.generation import generate
    from musicgen.generation.pianoroll import plot_pianoroll

    began = time.perf_counter()
    pieces = generate(checkpoint, bars=2 * bars, allow_eos=False, num_samples=count, seed=seed, log=None,
                      progress=False, **{"max_tokens": MAX_TOKENS_PER_BAR * bars, **options})
    rows, info = [], []
    for piece in pieces:
        rows.append(_row(form_report(piece.midi, 0, bars)))
        info.append({"tokens": len(piece.ids), "four_beat_bars": _four_beat_bars(piece.midi), "notes": piece.n_notes})
    if png is not None and pieces:
        plot_pianoroll(pieces[0].midi, png, 0, title=f"seed {seed}, piece 0: {info[0]['four_beat_bars']} four-beat "
                                                     f"bars, {info[0]['notes']} notes {options or ''}")
    return {"summary": _summary(rows, FORM_KEYS + LAG_KEYS + ("best_lag",)), "pieces": info,
            "rows": [{k: round(float(v), 4) for k, v in r.items()} for r in rows],
            "wall_s": round(time.perf_counter() - began, 1), "png": str(png) if png else None}


def continuations(checkpoint: str, songs: dict, count: int, bars: int, prompt_bars: int, seed: int,
                  options: dict, align: bool = False) -> dict:
    """One continuation per song of the first ``count`` test songs whose metre is 2 or 4 beats (so whole
    four-beat bars are whole song bars), with notes in the prompt and at least ``bars`` four-beat bars.
    ``align``: the prompts are the songs as a beat-aligned training saw them (``songs``, written to files)."""
    with tempfile.TemporaryDirectory() as folder:
        return _continuations(checkpoint, songs, count, bars, prompt_bars, seed, options, align, folder)


def _continuations(checkpoint: str, songs: dict, count: int, bars: int, prompt_bars: int, seed: int,
                   options: dict, align: bool, folder: str) -> dict:
    from musicgen.data.sources import read_pop909_metres
    from musicgen.generation import generate

    metres = read_pop909_metres(shared_data() / "pop909")
    began = time.perf_counter()
    form_rows, cont_rows, real_form, real_cont, used = [], [], [], [], []
    for song_id, path in pop909_test_songs():
        if len(used) >= count:
            break
        beats = metres.get(song_id, (4, 4))[0]
        midi = songs.get(song_id)
        if (midi is None or beats not in (2, 4) or _four_beat_bars(midi) < bars
                or not bar_sets(midi, 0, prompt_bars).any()):
            continue
        per_bar = 4 // beats  # song bars per four-beat bar
        prompt, metre = path, "index"
        if align:  # the song as training saw it: the aligned file (a prompt itself is never shifted)
            prompt, metre = Path(folder) / path.name, "{}/{}".format(*metres[song_id])
            midi.dump(str(prompt))
        piece = generate(checkpoint, prompt, prompt_bars=prompt_bars * per_bar, prompt_time_signature=metre,
                         bars=(bars - prompt_bars) * per_bar, allow_eos=False, num_samples=1, seed=seed, log=None,
                         progress=False, **{"max_tokens": MAX_TOKENS_PER_BAR * bars, **options})[0]
        if piece.start_tick != prompt_bars * 4 * piece.midi.ticks_per_beat:
            print(f"song {song_id}: the prompt ends at tick {piece.start_tick}, not at four-beat bar {prompt_bars}")
        used.append({"song": song_id, "four_beat_bars": _four_beat_bars(piece.midi),
                     "continuation_notes": piece.continuation_notes})
        form_rows.append(_row(form_report(piece.midi, 0, bars)))
        cont_rows.append(continuation_report(piece.midi, prompt_bars, bars))
        real_form.append(_row(form_report(midi, 0, bars)))
        real_cont.append(continuation_report(midi, prompt_bars, bars))
    keys = FORM_KEYS + LAG_KEYS + ("best_lag",)
    return {"songs": used, "form": _summary(form_rows, keys), "continuation": _summary(cont_rows, CONTINUATION_KEYS),
            "song_itself_form": _summary(real_form, keys),
            "song_itself_continuation": _summary(real_cont, CONTINUATION_KEYS),
            "rows": [{k: (round(float(v), 4) if isinstance(v, (int, float)) else v) for k, v in r.items()}
                     for r in cont_rows],
            "wall_s": round(time.perf_counter() - began, 1)}


def recall(checkpoint: str, count: int, align: bool = False) -> dict:
    from musicgen.evaluation.recall import teacher_forced_recall
    from musicgen.inference import load_model

    loaded = load_model(checkpoint, "cpu")
    began = time.perf_counter()
    out = teacher_forced_recall(loaded.model, loaded.tokenizer, [p for _, p in pop909_test_songs()][:count],
                                align=align)
    out["wall_s"] = round(time.perf_counter() - began, 1)
    return out


def checkpoint_aligns(checkpoint: str) -> bool:
    """Whether the checkpoint was trained on beat-aligned songs (its stored data.align_beats)."""
    from musicgen.inference.checkpoint import load_checkpoint

    return corpus_aligns_beats(load_checkpoint(checkpoint).config)


def _cell(summary: dict, key: str) -> str:
    value = summary.get(key, float("nan"))
    return "nan" if value != value else f"{value:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/musicgen-small.pt")
    p.add_argument("--pieces", type=int, default=8, help="unconditioned pieces (0 = none)")
    p.add_argument("--bars", type=int, default=64, help="four-beat bars measured")
    p.add_argument("--continuations", type=int, default=8, help="test songs continued (0 = none)")
    p.add_argument("--prompt-bars", type=int, default=16, help="four-beat bars of prompt")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--recall", action="store_true", help="teacher-forced recall on --songs test songs")
    p.add_argument("--songs", type=int, default=12, help="test songs of the recall measure")
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="a generate option for a second run of the model section, e.g. tonal_memory=0 (repeatable)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/form.json)")
    p.add_argument("--align", choices=("auto", "on", "off"), default="auto",
                   help="read the test songs with their beats on the grid (auto: as the checkpoint's corpus did, "
                        "data.align_beats)")
    args = p.parse_args()
    torch.set_num_threads(1)
    options = parse_options(args.option)
    align = args.align == "on" or (args.align == "auto" and checkpoint_aligns(args.checkpoint))
    out_path = Path(args.out) if args.out else RESULTS / "form.json"
    result: dict = {"checkpoint": args.checkpoint, "bars": args.bars, "prompt_bars": args.prompt_bars,
                    "options": options, "aligned_songs": align}
    if not (shared_data() / "pop909").is_dir():
        raise SystemExit(f"error: {shared_data() / 'pop909'} not found: set MUSICGEN_SHARED_DATA")

    began = time.perf_counter()
    songs = load_songs(REMITokenizer(), align)
    result["reference"] = ref = reference(songs, args.bars, args.prompt_bars)
    ref["wall_s"] = round(time.perf_counter() - began, 1)
    write_results("form", result, out_path, quiet=True)
    table = [(name, ref[name]) for name in ("songs", "shuffled", "random")]

    settings = [("default", {})] + ([("options", options)] if options else [])
    result["model"] = {}
    for label, opts in settings:
        model: dict = {"options": opts}
        if args.pieces > 0:
            png = out_path.with_name(out_path.stem + "_piece.png") if label == "default" else None
            model["free"] = free_pieces(args.checkpoint, args.pieces, args.bars, args.seed, opts, png)
            table.append((f"model pieces ({label})", model["free"]["summary"]))
        if args.continuations > 0:
            model["continuations"] = continuations(args.checkpoint, songs, args.continuations, args.bars,
                                                   args.prompt_bars, args.seed, opts, align)
            if label == "default":
                table.append((f"songs (the {len(model['continuations']['songs'])} continued)",
                              model["continuations"]["song_itself_form"]))
            table.append((f"model continuations ({label}; prompt incl.)", model["continuations"]["form"]))
        result["model"][label] = model
        write_results("form", result, out_path, quiet=True)

    print(f"\nform of the first {args.bars} four-beat bars (means; {ref['count']} POP909 test songs)")
    print_table(["", "repeat", "passage", "transp", "lag4-7", "8-15", "16-31", "32-64", "loop", "longest loop",
                 "best-lag sim", "best match", "SI 3-7", "SI 8-14", "SI 15+", "groove"],
                [[name] + [_cell(s, k) for k in ("repeating_share", "passage_share", "transposed_share") + LAG_KEYS
                           + ("loop_share", "longest_loop", "best_lag_similarity", "best_match_similarity",
                              "si_short", "si_mid", "si_long", "groove")] for name, s in table])
    print(f"songs' groove over their first 32 bars: {ref['songs']['groove_first_32_bars']}")

    cont_table = [(f"songs' own bars (all {ref['count']})", ref["song_continuations"])]
    for label, model in result["model"].items():
        if "continuations" in model:
            c = model["continuations"]
            if label == "default":
                cont_table.append((f"songs' own bars (the {len(c['songs'])} continued)", c["song_itself_continuation"]))
            cont_table.append((f"model ({label})", c["continuation"]))
    print(f"\ncontinuations: prompt = first {args.prompt_bars} four-beat bars, continued to {args.bars} (means)")
    print_table(["", "density ratio", "GS prompt-cont", "GS in prompt", "top-voice shift", "top gap prompt",
                 "top gap cont", "restates prompt", "repeat", "passage"],
                [[name] + [_cell(s, k) for k in CONTINUATION_KEYS] for name, s in cont_table])

    if args.recall:
        result["recall"] = r = recall(args.checkpoint, args.songs, align)
        print(f"\nteacher-forced recall, {args.checkpoint}, {r['songs']} test songs, first {r['max_tokens']} tokens")
        rows = [("bars restating an earlier bar", "restating", r["ratio"]),
                ("  nearest source 1-4 bars back", "restating_source_1-4", r["ratio_source_1-4"]),
                ("  nearest source 5-32 bars back", "restating_source_5-32", r["ratio_source_5-32"]),
                ("other bars", "other", 1.0)]
        gate = "copy_gate_other" in r  # a model with a recall head: how much it copies where
        print_table(["Pitch tokens in", "NLL (nats)", "tokens", "/ other"] + (["copy gate"] if gate else []),
                    [[label, r[f"nll_{key}"], r[f"pitch_tokens_{key}"], ratio]
                     + ([r.get(f"copy_gate_{key}", "")] if gate else []) for label, key, ratio in rows])
    write_results("form", result, out_path)


if __name__ == "__main__":
    main()
