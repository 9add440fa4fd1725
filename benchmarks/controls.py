"""Do the controls work on a trained model? Chord charts, density and tempo, measured on generated music.

    python -m benchmarks.controls [--checkpoint checkpoints/musicgen-small.pt] [--pieces 20] [--bars 16]
                                  [--metres 4/4 model] [--chord-tones only prefer free]
                                  [--density-pieces 8] [--bpm-pieces 4] [--seed 1] [--name controls] [--out X.json]

1. **Chord chart**: ``--pieces`` pieces of ``--bars`` bars (one batch, each row its own random 4-bar chart:
   random roots, mostly major/minor triads, a quarter of the bars split in two chords), generated with the
   chart imposed (``chords=``) under each ``chord_tones`` setting. For every chord slot of every bar (the
   tokenizer's half bars; see musicgen/generation/controls.py) the chord is recognised *from the generated
   notes* with the tokenizer's own rule (``musicgen.tokenizer.chords.detect_chords`` over that segment, sustained
   notes included) and compared with the chart: the share of exact matches (root and quality), of root
   matches, and of half bars where any chord is recognised. The same pieces generated *without* a chart (same
   seed), scored against the same charts, give the share by chance. Each is run in 4/4 (``time_signature=4/4``:
   a half bar is two beats, a chart bar a 4/4 bar) and in the model's own metre (POP909's index.tsv makes
   most songs 2/4, so there a half bar is a single beat).
2. **Density**: ``--density-pieces`` unconditioned pieces per level (low / medium / high, same seed): notes per
   bar and per onset of the continuation.
3. **Tempo**: ``--bpm-pieces`` pieces with ``bpm=80`` and with ``bpm=140``: the BPM their notes are played at
   (decoded MIDI), next to the unconditioned pieces' BPM.

The default settings take a few minutes on one CPU core. Prints tables and writes benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch


from benchmarks.common import print_table, write_results
from musicgen.generation import (ControlConfig, GenerationSession, SamplingConfig, StopConfig,
                                 unconditional_prompt)
from musicgen.generation.chords import N_QUALITIES, chord_slots, parse_chart
from musicgen.inference import file_sha256, load_model, resolve_checkpoint, resolve_device
from musicgen.tokenizer import DRUM_PROGRAM, PITCH_CLASS_NAMES, Bins, REMITokenizer, TokenType, detect_chords

SUFFIX = {"maj": "", "min": "m", "dim": "dim", "aug": "aug", "sus4": "sus4", "dom7": "7", "maj7": "maj7", "min7": "m7"}
QUALITY_WEIGHTS = {"maj": 0.45, "min": 0.35, "dom7": 0.08, "min7": 0.06, "maj7": 0.03, "sus4": 0.03}


def random_chart(rng: np.random.Generator, bars: int = 4, split: float = 0.25) -> str:
    """A chart text such as 'Am | F G | C | G7': random roots, mostly major/minor."""
    names, weights = list(QUALITY_WEIGHTS), np.asarray(list(QUALITY_WEIGHTS.values()))
    out = []
    for _ in range(bars):
        chords = []
        for _ in range(2 if rng.random() < split else 1):
            quality = names[rng.choice(len(names), p=weights / weights.sum())]
            chords.append(PITCH_CLASS_NAMES[int(rng.integers(12))] + SUFFIX[quality])
        out.append(" ".join(chords))
    return " | ".join(out)


def run_batch(model, tokenizer, controls: list[ControlConfig] | None, n: int, bars: int, seed: int,
              sampling: SamplingConfig, device: str, progress: bool = True) -> tuple[list, float]:
    stop = StopConfig(bars=bars, allow_eos=False, max_tokens=max(4096, 400 * bars))
    session = GenerationSession(model, tokenizer, sampling, stop, seed, device, controls=controls)
    began = time.perf_counter()
    results = session.run(unconditional_prompt(tokenizer), n, progress=progress)
    return results, time.perf_counter() - began


def chart_agreement(tokenizer: REMITokenizer, ids: list[int], chart_text: str) -> dict:
    """Per chord slot of each bar: the chart's chord vs the chord recognised from the notes in that segment."""
    score, report = tokenizer.decode_to_score(ids)
    chart = parse_chart(chart_text)
    pitched = [(n.onset, n.duration, n.pitch) for n in score.notes if n.program != DRUM_PROGRAM]
    segments, wanted = [], []
    for k, bar in enumerate(score.bars):
        slots = chord_slots(chart.bar(k), bar.length, (bar.numerator, bar.denominator))
        for i, (pos, chord) in enumerate(slots):
            end = slots[i + 1][0] if i + 1 < len(slots) else bar.length
            segments.append((bar.start + pos, bar.start + end))
            wanted.append(chord)
    found = dict(detect_chords(pitched, segments))
    got = [found.get(start) for start, _ in segments]
    exact = sum(g == w for g, w in zip(got, wanted))
    root = sum(g is not None and g // N_QUALITIES == w // N_QUALITIES for g, w in zip(got, wanted))
    return {"slots": len(wanted), "exact": exact, "root": root, "recognised": sum(g is not None for g in got),
            "skipped": report.skipped, "metres": sorted({f"{b.numerator}/{b.denominator}" for b in score.bars})}


def share(rows: list[dict], key: str) -> float:
    total = sum(r["slots"] for r in rows)
    return round(sum(r[key] for r in rows) / total, 4) if total else float("nan")


def notes_per_bar(tokenizer: REMITokenizer, result) -> tuple[float, float]:
    vocab = tokenizer.vocab
    cont = result.ids[result.prompt_length:]
    notes = sum(vocab.type_of(t) == TokenType.DURATION for t in cont)
    onsets = sum(vocab.type_of(t) == TokenType.POSITION for t in cont)
    return notes / max(result.n_bars, 1), notes / max(onsets, 1)


def played_bpm(tokenizer: REMITokenizer, ids: list[int]) -> float:
    """Median over the notes of the tempo in effect at each note onset (120 before any Tempo token)."""
    score, _ = tokenizer.decode_to_score(ids)
    bins = Bins(tokenizer.config)
    if not score.notes:
        return float("nan")
    steps = [s for s, _ in score.tempos]
    values = [bins.tempo_of_bin[b] for _, b in score.tempos]
    at = []
    for note in score.notes:
        i = int(np.searchsorted(steps, note.onset, side="right")) - 1
        at.append(values[i] if i >= 0 else 120.0)
    return float(np.median(at))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/musicgen-small.pt")
    p.add_argument("--pieces", type=int, default=20, help="pieces with a random chart (and as many without)")
    p.add_argument("--bars", type=int, default=16)
    p.add_argument("--metres", nargs="+", default=["4/4", "model"],
                   help="time_signature of the chart runs; model = the model's own choice (2/4 for POP909 models)")
    p.add_argument("--chord-tones", nargs="+", default=["only", "prefer", "free"], choices=["only", "prefer", "free"])
    p.add_argument("--density-pieces", type=int, default=8, help="pieces per density level (0 = skip)")
    p.add_argument("--bpm-pieces", type=int, default=4, help="pieces per tempo (0 = skip)")
    p.add_argument("--bpm-bars", type=int, default=8)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default="controls")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/<name>.json)")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    device = str(resolve_device(args.device))
    ckpt_path = resolve_checkpoint(args.checkpoint)
    sha = file_sha256(ckpt_path)  # the checkpoint may be replaced while this runs: record what was loaded
    loaded = load_model(ckpt_path, device)
    model, ckpt, tokenizer = loaded.model, loaded.checkpoint, loaded.tokenizer
    sampling = SamplingConfig(temperature=args.temperature, top_p=args.top_p)
    rng = np.random.default_rng(args.seed)
    charts = [random_chart(rng) for _ in range(args.pieces)]
    result: dict = {
        "benchmark": "controls", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "device": device,
                    "threads": args.threads},
        "checkpoint": {"path": str(ckpt_path), "sha256": sha, "step": ckpt.step, "model": ckpt.model_config.get("name")},
        "settings": {k: v for k, v in vars(args).items()} | {"sampling": sampling.to_dict()},
    }

    # 1. chord charts vs chance -------------------------------------------------------------------------------
    chart_result: dict = {"pieces": args.pieces, "bars": args.bars, "charts": charts, "target_exact_share": 0.8}
    table = []
    without = None
    for metre in args.metres:
        ts = None if metre == "model" else metre
        runs: dict = {}
        for mode in args.chord_tones + ["none"]:
            configs = ([ControlConfig(time_signature=ts)] * args.pieces if mode == "none" else
                       [ControlConfig(chords=c, chord_tones=mode, time_signature=ts) for c in charts])
            results, wall = run_batch(model, tokenizer, configs if configs[0].active else None, args.pieces,
                                      args.bars, args.seed, sampling, device)
            if mode == "none" and metre == "model":
                without = results
            rows = [chart_agreement(tokenizer, r.ids, c) | {"forced_chords": r.controls.get("forced_chords", 0),
                                                             "fallbacks": r.controls.get("fallbacks", 0),
                                                             "notes_per_bar": notes_per_bar(tokenizer, r)[0]}
                    for r, c in zip(results, charts)]
            runs[mode] = {"exact_share": share(rows, "exact"), "root_share": share(rows, "root"),
                          "recognised_share": share(rows, "recognised"), "slots": sum(r["slots"] for r in rows),
                          "forced_chords": sum(r["forced_chords"] for r in rows),
                          "fallbacks": sum(r["fallbacks"] for r in rows), "skipped": sum(r["skipped"] for r in rows),
                          "notes_per_bar": round(float(np.mean([r["notes_per_bar"] for r in rows])), 2),
                          "tokens_per_piece": round(float(np.mean([len(r.ids) for r in results])), 1),
                          "per_piece_exact": [round(r["exact"] / max(r["slots"], 1), 3) for r in rows],
                          "metres": sorted({m for r in rows for m in r["metres"]}), "wall_s": round(wall, 1)}
            label = "no chart (chance)" if mode == "none" else f"chart, chord_tones={mode}"
            v = runs[mode]
            table.append([metre if metre != "model" else "model's own", label, v["slots"], v["exact_share"],
                          v["root_share"], v["recognised_share"], v["notes_per_bar"], v["forced_chords"],
                          v["fallbacks"], v["skipped"]])
        chart_result[metre] = runs
    result["chart"] = chart_result
    print_table(["metre", "run", "half bars", "exact match", "root match", "a chord recognised", "notes/bar",
                 "forced chords", "fallbacks", "skipped"], table)

    # 2. density -----------------------------------------------------------------------------------------------
    if without is None:
        without, _ = run_batch(model, tokenizer, None, args.pieces, args.bars, args.seed, sampling, device)
    free_bpm = [played_bpm(tokenizer, r.ids) for r in without]
    if args.density_pieces:
        density = {}
        for level in ("low", "medium", "high"):
            results, wall = run_batch(model, tokenizer, [ControlConfig(density=level)] * args.density_pieces,
                                      args.density_pieces, args.bars, args.seed, sampling, device)
            stats = [notes_per_bar(tokenizer, r) for r in results]
            density[level] = {"factor": ControlConfig(density=level).density_factor,
                              "notes_per_bar": round(float(np.mean([s[0] for s in stats])), 3),
                              "notes_per_onset": round(float(np.mean([s[1] for s in stats])), 3),
                              "per_piece_notes_per_bar": [round(s[0], 2) for s in stats], "wall_s": round(wall, 1)}
        result["density"] = density
        print_table(["density", "odds factor", "notes/bar", "notes/onset"],
                    [[k, round(v["factor"], 3), v["notes_per_bar"], v["notes_per_onset"]] for k, v in density.items()])

    # 3. tempo ---------------------------------------------------------------------------------------------------
    if args.bpm_pieces:
        tempo = {"unconditioned_bpm": [round(b, 2) for b in free_bpm]}
        bins = Bins(tokenizer.config)
        for bpm in (80, 140):
            results, wall = run_batch(model, tokenizer, [ControlConfig(bpm=bpm)] * args.bpm_pieces, args.bpm_pieces,
                                      args.bpm_bars, args.seed, sampling, device)
            played = [played_bpm(tokenizer, r.ids) for r in results]
            target = bins.tempo_of_bin[bins.tempo_bin(bpm)]
            tempo[str(bpm)] = {"bin_bpm": target, "played_bpm": [round(b, 2) for b in played],
                               "all_at_bin": all(abs(b - target) < 1e-6 for b in played), "wall_s": round(wall, 1)}
        result["tempo"] = tempo
        print_table(["bpm asked", "bin BPM", "played BPM (median over pieces)", "every piece at the bin"],
                    [[k, v["bin_bpm"], round(float(np.median(v["played_bpm"])), 2), v["all_at_bin"]]
                     for k, v in tempo.items() if k != "unconditioned_bpm"]
                    + [["(none)", "-", round(float(np.nanmedian(free_bpm)), 2), "-"]])
    write_results(args.name, result, args.out)


if __name__ == "__main__":
    main()
