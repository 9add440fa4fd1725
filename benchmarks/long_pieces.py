"""Long pieces and continuations, measured the way a listener would: do they stay music, and in the prompt's world?

    python -m benchmarks.long_pieces [--checkpoint checkpoints/musicgen-small.pt] [--tokens 20000]
                                     [--seeds 5 7 9] [--prompts 12] [--samples 4] [--name long_pieces]
                                     [--option tonal_memory=0 ...]

1. **Free generation**: one piece per seed of ``--tokens`` tokens with EOS off and no bar limit (the README's
   long-piece command), then statistics per window of 16 four-beat bars (musicgen/evaluation/bar_windows.py):
   notes per bar, H4, groove, share of notes in the best diatonic scale, loop detectors; bars reached; how often
   the decoding guards acted; and the form measures of every 64-bar window (one every 32 bars): loops, the
   longest run of them, bars in repeated passages. The first piece's piano roll is written beside the JSON.
2. **Continuations**: the first ``--prompts`` POP909 test songs (id % 20 == 0) with at least 24 bars; prompt =
   their first 8 bars, ``--samples`` continuations of 16 bars each; key / register / density / groove /
   out-of-scale distances to the prompt (musicgen/evaluation/continuation.py) next to the same distances for
   the song's own next 16 bars, each with its standard error (12 songs are few: the songs' own register
   distance is 3.4 +- 1.1 semitones); and the signed register shift, with its correlation over the prompts
   with the song's own shift (a continuation that moves where the song moves is not drifting).
3. The same window statistics of those POP909 test songs, for reference.

Prints tables and writes benchmarks/results/<name>.json (+ <name>_piece.png).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


from benchmarks.common import RESULTS, parse_options, print_table, sem, shared_data, write_results
from musicgen.config import UserError
from musicgen.evaluation.bar_windows import bar_window_statistics, within_range
from musicgen.evaluation.continuation import FIDELITY_KEYS, fidelity, note_arrays
from musicgen.evaluation.form import form_report
from musicgen.generation import generate
from musicgen.generation.pianoroll import plot_pianoroll
from musicgen.generation.prompt import load_prompt
from musicgen.tokenizer import REMITokenizer

REPO_OUTPUTS = Path(__file__).resolve().parents[1] / "outputs" / "long_pieces"
WINDOW_KEYS = ("notes_per_bar", "h4", "groove", "scale_share", "max_same_onset_pitch", "max_notes_per_onset")
#: form past song length: the form measures (musicgen/evaluation/form.py) of every FORM_WINDOW four-beat bars,
#: one window every FORM_HOP bars: does the piece keep restating, and does it settle into copying the bar before?
FORM_WINDOW, FORM_HOP = 64, 32


def form_windows(midi, bars: int) -> list[dict]:
    """Loop share, longest loop run and share of bars in repeated passages of each whole window of the piece's
    ``bars`` four-beat bars."""
    out = []
    for start in range(0, bars - FORM_WINDOW + 1, FORM_HOP):
        r = form_report(midi, start, FORM_WINDOW)
        out.append({"start_bar": start, "loop_share": round(r["loop_share"], 4), "longest_loop": r["longest_loop"],
                    "passage_share": round(r["passage_share"], 4)})
    return out


def _window_summary(stats) -> dict:
    out = {k: [round(float(np.nanmin([getattr(s, k) for s in stats])), 4),
               round(float(np.nanmedian([getattr(s, k) for s in stats])), 4),
               round(float(np.nanmax([getattr(s, k) for s in stats])), 4)] if stats else None for k in WINDOW_KEYS}
    out["range_check"] = within_range(stats)
    return out


def free_generation(checkpoint: str, tokens: int, seeds: list[int], name: str, options: dict | None = None) -> dict:
    pieces = {}
    for i, seed in enumerate(seeds):
        began = time.perf_counter()
        piece = generate(checkpoint, tokens=tokens, bars=None, allow_eos=False, seed=seed, progress=True, log=None,
                         **(options or {}))[0]
        elapsed = time.perf_counter() - began
        stats = bar_window_statistics(piece.midi)
        beats = (max((n.start for inst in piece.midi.instruments for n in inst.notes), default=0)
                 / piece.midi.ticks_per_beat)
        pieces[str(seed)] = {"tokens": len(piece.ids), "bars_4_beats": int(beats // 4), "notes": piece.n_notes,
                             "seconds": round(piece.seconds, 1), "wall_s": round(elapsed, 1),
                             "guards": piece.guards, "windows": [s.to_dict() for s in stats],
                             "form_windows": form_windows(piece.midi, int(beats // 4)),
                             "summary": _window_summary(stats)}
        folder = REPO_OUTPUTS / name
        folder.mkdir(parents=True, exist_ok=True)
        piece.midi.dump(str(folder / f"seed{seed}.mid"))  # to listen to (outputs/ is not committed)
        if i == 0:
            png = RESULTS / f"{name}_piece.png"
            plot_pianoroll(piece.midi, png, 0, title=f"seed {seed}: {len(piece.ids)} tokens, "
                                                     f"{int(beats // 4)} bars, {piece.n_notes} notes")
            pieces[str(seed)]["png"] = str(png)
    return pieces


def _test_songs(count: int, tokenizer: REMITokenizer) -> list[Path]:
    """The first ``count`` POP909 test songs with >= 24 bars whose first 8 bars have notes (a prompt of
    silence says nothing about a song's world: song 200 opens with 8 empty bars)."""
    root = shared_data() / "pop909"
    songs = []
    for song_id in range(20, 910, 20):
        path = root / f"{song_id:03d}.mid"
        if not path.is_file() or load_prompt(path, tokenizer, time_signature="index").n_bars < 24:
            continue
        try:
            load_prompt(path, tokenizer, prompt_bars=8, time_signature="index")
        except UserError:
            continue
        songs.append(path)
        if len(songs) >= count:
            break
    return songs


def continuations(checkpoint: str, count: int, seed: int, samples: int = 2, options: dict | None = None) -> dict:
    tokenizer = REMITokenizer()
    rows, real_rows = [], []
    for path in _test_songs(count, tokenizer):
        song = tokenizer.decode(load_prompt(path, tokenizer, time_signature="index").ids)
        pieces = generate(checkpoint, path, prompt_bars=8, prompt_time_signature="index", bars=16,
                          num_samples=samples, seed=seed, progress=False, log=None, **(options or {}))
        start = pieces[0].start_tick
        span = 2 * start  # 16 bars of the song's metre = twice the 8-bar prompt
        prompt = note_arrays(song, 0, start)
        real_rows.append(_with_shift(prompt, note_arrays(song, start, start + span)))
        for piece in pieces:
            rows.append(_with_shift(prompt, note_arrays(piece.midi, start, start + span)))
    mean = lambda rs, k: round(float(np.nanmean([r[k] for r in rs])), 4)  # noqa: E731
    return {"songs": len(real_rows), "samples": len(rows),
            "generated": {k: mean(rows, k) for k in FIDELITY_KEYS},
            "song_itself": {k: mean(real_rows, k) for k in FIDELITY_KEYS},
            # standard errors of those means: 12 songs are few, so differences smaller than ~2 SE are noise
            "generated_sem": {k: sem([r[k] for r in rows]) for k in FIDELITY_KEYS},
            "song_itself_sem": {k: sem([r[k] for r in real_rows]) for k in FIDELITY_KEYS},
            # does a continuation move its register the way the song itself moves on (r of the song's signed
            # shift with the mean shift of its samples)? Intros are often higher than what follows.
            "register_shift_mean": {"generated": mean(rows, "register_shift"),
                                    "song_itself": mean(real_rows, "register_shift")},
            "register_shift_correlation": _shift_correlation(rows, real_rows, samples),
            "generated_rows": [{k: round(v, 4) for k, v in r.items()} for r in rows],
            "song_itself_rows": [{k: round(v, 4) for k, v in r.items()} for r in real_rows]}


def _shift_correlation(rows: list[dict], real_rows: list[dict], samples: int) -> float:
    """Pearson r over the prompts of the song's own register shift and the mean shift of its continuations."""
    song = np.array([r["register_shift"] for r in real_rows], dtype=float)
    generated = np.array([np.nanmean([r["register_shift"] for r in rows[i * samples:(i + 1) * samples]])
                          for i in range(len(real_rows))], dtype=float)
    ok = np.isfinite(song) & np.isfinite(generated)
    return round(float(np.corrcoef(song[ok], generated[ok])[0, 1]), 4) if ok.sum() > 2 else float("nan")


def _with_shift(prompt: tuple, continuation: tuple) -> dict[str, float]:
    """The fidelity distances of 8 prompt bars and 16 continuation bars, plus ``register_shift``: the signed
    mean-pitch move (semitones, + = higher), which says whether a register distance is a drift one way."""
    row = fidelity(prompt, 8, continuation, 16)
    row["register_shift"] = (float(continuation[1].mean() - prompt[1].mean())
                             if len(prompt[1]) and len(continuation[1]) else float("nan"))
    return row


def reference_windows(count: int) -> dict:
    tokenizer = REMITokenizer()
    stats = []
    for path in _test_songs(count, tokenizer):
        stats += bar_window_statistics(tokenizer.decode(load_prompt(path, tokenizer, time_signature="index").ids))
    return _window_summary(stats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/musicgen-small.pt")
    p.add_argument("--tokens", type=int, default=20000)
    p.add_argument("--seeds", type=int, nargs="*", default=[5, 7, 9],
                   help="one free piece per seed (none: only the continuations)")
    p.add_argument("--prompts", type=int, default=12, help="POP909 test songs to continue (0 = skip)")
    p.add_argument("--seed", type=int, default=1, help="seed of the continuations")
    p.add_argument("--samples", type=int, default=4, help="continuations per prompt")
    p.add_argument("--name", default="long_pieces")
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="a generate option for every piece, e.g. --option tonal_memory=0 (repeatable)")
    args = p.parse_args()
    options = parse_options(args.option)

    result = {"checkpoint": args.checkpoint, "tokens": args.tokens, "options": options,
              "free": free_generation(args.checkpoint, args.tokens, args.seeds, args.name, options)}
    rows = []
    for seed, r in result["free"].items():
        s, check, acted = r["summary"], r["summary"]["range_check"], sum(r["guards"]["acted"].values())
        if s["notes_per_bar"] is None:  # shorter than one window (a small --tokens): nothing per window to show
            rows.append([seed, r["bars_4_beats"], "no full 16-bar window", "", "", "", "", "", "no", acted])
            continue
        rows.append([seed, r["bars_4_beats"], f"{s['notes_per_bar'][0]}-{s['notes_per_bar'][2]}",
                     s["h4"][2], s["groove"][0], s["scale_share"][0], s["max_same_onset_pitch"][2],
                     s["max_notes_per_onset"][2], "yes" if check["all_inside"] else "no", acted])
    write_results(args.name, result)  # the free pieces are kept even if the continuations fail
    print_table(["seed", "bars", "notes/bar (min-max)", "H4 max", "groove min", "scale min", "same (onset,pitch) max",
                 "notes/onset max", "all windows in range", "guard actions"], rows)
    print_table(["seed", f"form of each {FORM_WINDOW}-bar window from bar 0, {FORM_HOP}, ...: loop share / longest "
                 "loop / share in repeated passages"],
                [[seed, "  ".join(f"{w['loop_share']:.2f}/{w['longest_loop']}/{w['passage_share']:.2f}"
                                  for w in r["form_windows"])] for seed, r in result["free"].items()])
    if args.prompts and (shared_data() / "pop909").is_dir():
        result["continuation"] = continuations(args.checkpoint, args.prompts, args.seed, args.samples, options)
        result["pop909_test_windows"] = reference_windows(args.prompts)
        c = result["continuation"]
        print_table(["distance to the prompt (mean +- standard error)"] + list(FIDELITY_KEYS),
                    [["generated"] + [f"{c['generated'][k]} +- {c['generated_sem'][k]}" for k in FIDELITY_KEYS],
                     ["the song's own next 16 bars"]
                     + [f"{c['song_itself'][k]} +- {c['song_itself_sem'][k]}" for k in FIDELITY_KEYS]])
        print(f"register shift (signed mean, semitones): generated {c['register_shift_mean']['generated']}, songs "
              f"{c['register_shift_mean']['song_itself']}; r(song's shift, its continuations' mean shift) = "
              f"{c['register_shift_correlation']}")
    write_results(args.name, result)


if __name__ == "__main__":
    main()
