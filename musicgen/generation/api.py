"""`generate(...)`: the Python API the `generate.py` CLI wraps (usable from notebooks).

    from musicgen.generation import generate
    pieces = generate("checkpoints/musicgen-small.pt", bars=16, num_samples=4, seed=1, output_dir="out")
    pieces[0].midi            # miditoolkit.MidiFile; pieces[0].files["mid"] when output_dir was given

The checkpoint carries its model config and vocabulary, so prompts are tokenized exactly as in training.
Each piece is decoded with the tokenizer's own decoder; because sampling is grammar-constrained the decoder
never skips a token (`piece.report.skipped == 0`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import miditoolkit

from .. import __version__
from ..atomic import atomic_write, atomic_write_text
from ..config import UserError, check_writable_dir, make_dir
from ..tokenizer import DecodeReport, REMITokenizer, TokenType
from ..inference import LoadedModel, file_sha256, load_model, resolve_checkpoint, resolve_device
from .options import GenerateOptions
from .pianoroll import plot_pianoroll
from .prompt import Prompt, load_prompt, unconditional_prompt
from .render import render_wav
from .form_plan import TOKENS_PER_BAR, make_plan, planned_controls, run_planned
from .infill import CONTEXT_TOKENS, InfilledPiece, run_infill, trained_for_infill
from .session import GenerationSession, SampleResult, StopConfig, sample_seed, state_nbytes
from .timeline import midi_seconds

Log = Callable[[str], None]


@dataclass
class GeneratedPiece:
    """One generated piece: its tokens, decoded MIDI, decode report and (when written) its files."""

    index: int
    name: str
    ids: list[int]
    prompt_length: int
    midi: miditoolkit.MidiFile
    report: DecodeReport
    start_tick: int  # where the continuation starts (0 without a prompt)
    stop_reason: str
    n_bars: int
    seconds: float  # length of the written MIDI, to the end of its last note
    files: dict[str, Path] = field(default_factory=dict)
    guards: dict[str, Any] = field(default_factory=dict)  # how often each musical rule acted (guards.py)
    controls: dict[str, Any] = field(default_factory=dict)  # chord chart, bpm, ... as applied (controls.py)
    tonal_memory: dict[str, Any] = field(default_factory=dict)  # the pitch-class prior as applied (tonal.py)
    rules: dict[str, Any] = field(default_factory=dict)  # the other decode rules' reports, by key (e.g. "loops")
    continuation_notes: int = 0  # notes the model wrote after the prompt (one Duration token per note)
    warnings: list[str] = field(default_factory=list)  # e.g. a continuation without a single note
    infilled: list[tuple[int, int]] = field(default_factory=list)  # regenerated (start, end) ticks (infill)
    infill: list[dict[str, Any]] = field(default_factory=list)  # per range: notes, candidates' scores, reports
    sections: list[dict[str, Any]] = field(default_factory=list)  # a planned form's sections (form_plan.py)

    @property
    def n_notes(self) -> int:
        return sum(len(inst.notes) for inst in self.midi.instruments)

    @property
    def continuation_ids(self) -> list[int]:
        return self.ids[self.prompt_length:]


def drop_before(midi: miditoolkit.MidiFile, tick: int) -> miditoolkit.MidiFile:
    """Remove notes (and chord markers) starting before `tick`; tempo and metre maps stay as they are."""
    for inst in midi.instruments:
        inst.notes = [n for n in inst.notes if n.start >= tick]
    midi.instruments = [inst for inst in midi.instruments if inst.notes]
    midi.markers = [m for m in midi.markers if m.time >= tick]
    return midi


def _decode(tokenizer: REMITokenizer, result: SampleResult, include_prompt: bool,
            ) -> tuple[miditoolkit.MidiFile, DecodeReport, int]:
    midi, report = tokenizer.decode_with_report(result.ids)
    ticks_per_step = midi.ticks_per_beat // tokenizer.config.steps_per_quarter
    start_tick = result.start_step * ticks_per_step
    if not include_prompt and result.prompt_length > 1:
        midi = drop_before(midi, start_tick)
    return midi, report, start_tick


def _width(options: GenerateOptions) -> int:
    """Digits of the sample number in file names (sample_00 ... sample_99, then three digits)."""
    return max(2, len(str(options.num_samples - 1)))


def _generated_piece(index: int, name: str, result: SampleResult, tokenizer: REMITokenizer,
                     include_prompt: bool) -> GeneratedPiece:
    vocab = tokenizer.vocab
    midi, report, start_tick = _decode(tokenizer, result, include_prompt)
    notes = int((vocab.types[result.ids[result.prompt_length:]] == TokenType.DURATION).sum())
    piece = GeneratedPiece(index, name, result.ids, result.prompt_length, midi, report, start_tick,
                           result.stop_reason, result.n_bars, midi_seconds(midi), guards=result.guards,
                           controls=result.controls, tonal_memory=result.tonal_memory, rules=result.other_rules,
                           continuation_notes=notes)
    warning = no_notes_warning(piece, vocab)
    if warning:
        piece.warnings.append(warning)
    return piece


def _infilled_piece(index: int, name: str, filled: InfilledPiece, tokenizer: REMITokenizer) -> GeneratedPiece:
    """An infilled sample as a GeneratedPiece: the whole piece, its regenerated bars marked (``infilled``) and
    each range's choice and rule reports under ``infill``."""
    _, report = tokenizer.decode_with_report(filled.ids)
    gaps = [{"bars": str(g.range), "ticks": list(span), "notes": notes, "candidates": len(g.scores),
             "suffix_logprob": g.scores, "chosen": g.chosen, "guards": g.result.guards,
             "controls": g.result.controls, "tonal_memory": g.result.tonal_memory, **g.result.other_rules}
            for g, span, notes in zip(filled.gaps, filled.spans, filled.notes)]
    piece = GeneratedPiece(index, name, filled.ids, len(filled.ids), filled.midi, report, filled.spans[0][0],
                           "infill", sum(g.range.count for g in filled.gaps), midi_seconds(filled.midi),
                           continuation_notes=sum(filled.notes), infilled=filled.spans, infill=gaps)
    for g, notes in zip(filled.gaps, filled.notes):
        if notes == 0:
            piece.warnings.append(f"{name}: bars {g.range} were filled without a note; try another seed")
    return piece


def _metadata(piece: GeneratedPiece, options: GenerateOptions, seed: int, ckpt_path: Path, ckpt: Any,
              prompt: Prompt, device: str, tokens_per_second: float) -> dict[str, Any]:
    return {
        "musicgen_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "checkpoint": {"path": str(ckpt_path), "sha256": file_sha256(ckpt_path), "step": ckpt.step,
                       "model": ckpt.model_config.get("name"), "vocab_fingerprint": ckpt.vocab.fingerprint},
        "seed": seed,
        "sample_index": piece.index,
        "num_samples": options.num_samples,
        "sampling": options.sampling.to_dict(),
        "stop": options.stop.to_dict(),
        "prompt": None if prompt.is_empty else {
            "path": str(prompt.path), "sha256": file_sha256(prompt.path) if prompt.path else None,
            "prompt_bars": options.prompt_bars, "prompt_seconds": options.prompt_seconds,
            "time_signature": "/".join(map(str, prompt.time_signature)) if prompt.time_signature else "file",
            "tokens": len(prompt.ids), "bars": prompt.n_bars, "notes": prompt.n_notes},
        "include_prompt": options.include_prompt,
        "infill": piece.infill or None,
        "form": piece.sections or None,
        "continuation_start_tick": piece.start_tick,
        "stop_reason": piece.stop_reason,
        "tokens": len(piece.ids),
        "prompt_tokens": piece.prompt_length,
        "continuation_tokens": len(piece.ids) - piece.prompt_length,
        "continuation_bars": piece.n_bars,
        "skipped": piece.report.skipped,
        "guards": piece.guards,
        "controls": piece.controls or options.controls.to_dict(),
        "tonal_memory": piece.tonal_memory,
        **piece.rules,
        "n_notes": piece.n_notes,
        "continuation_notes": piece.continuation_notes,
        "no_notes": piece.continuation_notes == 0,
        "warnings": list(piece.warnings),
        "seconds": round(piece.seconds, 3),
        "device": device,
        "tokens_per_second": round(tokens_per_second, 1),
        "files": {k: str(v) for k, v in piece.files.items()},
    }


def _write(piece: GeneratedPiece, folder: Path, options: GenerateOptions, log: Log) -> None:
    mid = folder / f"{piece.name}.mid"
    atomic_write(mid, lambda handle: piece.midi.dump(file=handle))
    piece.files["mid"] = mid
    if options.pianoroll:
        shade = piece.start_tick if len(piece.ids) and piece.prompt_length > 1 and not piece.infilled else 0
        piece.files["png"] = plot_pianoroll(piece.midi, folder / f"{piece.name}.png", shade,
                                            title=f"{piece.name}: {piece.n_notes} notes, {piece.seconds:.1f} s",
                                            regenerated=piece.infilled,
                                            sections=[(s["first_bar"] - 1, s["letter"]) for s in piece.sections])
    if options.render == "wav":
        wav, how = render_wav(mid, folder / f"{piece.name}.wav", options.soundfont)
        piece.files["wav"] = wav
        if piece.index == 0:
            log(f"audio preview: {how}")


def no_notes_warning(piece: GeneratedPiece, vocab: Any) -> str | None:
    """Why a continuation holds no note, in words (None when it has notes): which tokens it is made of.

    (Greedy decoding of an earlier shipped model, for instance, loops on `Position Chord` events: each bar gets chord
    symbols at two positions but never a Velocity-Pitch-Duration, so the MIDI file has no notes.)
    """
    if piece.continuation_notes:
        return None
    counts: dict[str, int] = {}
    for token in piece.continuation_ids:
        kind = TokenType(int(vocab.types[token])).name.title().replace("_", "")
        counts[kind] = counts.get(kind, 0) + 1
    made_of = ", ".join(f"{k} x{v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "nothing"
    where = " (the file holds only the prompt's notes)" if piece.prompt_length > 1 and piece.n_notes else ""
    return (f"{piece.name}: the continuation has no notes{where}: its {len(piece.continuation_ids)} tokens are "
            f"{made_of}; try another seed or a temperature > 0")


def available_memory_bytes(device: str) -> int | None:
    """Free memory for generation on `device` (GPU: free device memory; CPU: MemAvailable, capped by a cgroup
    limit when the process runs in one); None when it cannot be told."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(dev)[0])
        except (RuntimeError, AssertionError):
            return None
    known: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                known.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit, usage = Path(limit_file).read_text().strip(), Path(usage_file).read_text().strip()
            if limit.isdigit() and int(limit) < 1 << 60:
                known.append(max(0, int(limit) - int(usage)))
                break
        except (OSError, ValueError):
            continue
    return min(known) if known else None


def bytes_per_sample(model: Any, vocab_size: int, device: str, tokens: int) -> tuple[int, int]:
    """(device bytes, host bytes) one more sample of `tokens` tokens needs: its recurrent state (measured on a
    throwaway batch of one after one and two steps, so a growing KV cache is extrapolated), twice over while a
    step replaces it, plus logits, masks and bookkeeping on the host."""
    import torch

    with torch.inference_mode():
        state = model.init_state(1, device=device, generator=torch.Generator().manual_seed(0))
        token = torch.zeros(1, dtype=torch.long, device=device)
        _, state = model.step(token, state)
        one = state_nbytes(state)
        _, state = model.step(token, state)
        two = state_nbytes(state)
    per_state = one + max(0, two - one) * max(0, tokens - 1)
    return 2 * per_state, 48 * vocab_size + 64 * tokens + 32 * 1024


def check_batch_fits(model: Any, vocab_size: int, num_samples: int, device: str, tokens: int) -> None:
    """num_samples pieces run as one batch: refuse, before sampling, a batch that cannot fit in memory."""
    device_bytes, host_bytes = bytes_per_sample(model, vocab_size, device, tokens)
    on_gpu = str(device).startswith("cuda")
    budgets = [(device_bytes, available_memory_bytes(device), str(device))] if on_gpu else \
        [(device_bytes + host_bytes, available_memory_bytes("cpu"), "this machine")]
    if on_gpu:
        budgets.append((host_bytes, available_memory_bytes("cpu"), "this machine"))
    for per_sample, available, where in budgets:
        if available is None or per_sample <= 0:
            continue
        usable = int(available * 0.8)
        if per_sample * num_samples > usable:
            fit = max(0, usable // per_sample)
            raise UserError(f"num_samples={num_samples}: generating them as one batch of {tokens} tokens each needs "
                            f"about {per_sample * num_samples / 2**30:.1f} GiB on {where} ({per_sample / 2**20:.2f} "
                            f"MiB per sample), more than the {available / 2**30:.1f} GiB available; use num_samples "
                            f"<= {fit} (runs with other seeds give more pieces)")


def generate(checkpoint: str | Path | None = None, prompt: str | Path | None = None, *,
             log: Log | None = print, **kwargs: Any) -> list[GeneratedPiece]:
    """Generate `num_samples` pieces (one batch) from a checkpoint, unconditionally or continuing `prompt`.

    Keyword options are the fields of `GenerateOptions` (documented in conf/generate.yaml): stop conditions
    `bars`/`tokens`/`seconds`/`max_tokens`/`allow_eos`, sampling `temperature`/`top_k`/`top_p`/
    `repetition_penalty`/`repetition_window`, `seed`, `prompt_bars`/`prompt_seconds`/`include_prompt`, the
    controls `chords="Am F C G"`/`bpm`/`time_signature`/`density`/`key` (musicgen/generation/controls.py), ...
    Files (.mid, .png, .json, optional .wav) are written only when `output_dir` is given.
    """
    values = dict(kwargs)
    if checkpoint is not None:
        values["checkpoint"] = str(checkpoint)
    if prompt is not None:
        values["prompt"] = str(prompt)
    return generate_with(GenerateOptions.from_mapping(values), log=log)


def generate_with(options: GenerateOptions, log: Log | None = print,
                  on_progress: Callable[[int, int], None] | None = None,
                  loaded: LoadedModel | None = None) -> list[GeneratedPiece]:
    """`generate` for an already validated `GenerateOptions`; `on_progress(tokens done, token limit)` is called
    every 64 sampling steps and at the end (the web studio's progress bar). `loaded`: a model already loaded
    with `musicgen.inference.load_model` (evaluate reuses its own); `options.checkpoint`/`device` are then
    not read."""
    log = log or (lambda _msg: None)
    ckpt_path = loaded.path if loaded is not None else resolve_checkpoint(options.checkpoint)
    device = str(loaded.device if loaded is not None else resolve_device(options.device))
    if options.output_dir:  # before any work: a long run must not be lost to a folder it cannot write
        check_writable_dir(options.output_dir, "output_dir")
    seed = options.resolved_seed()
    loaded = loaded or load_model(ckpt_path, device)
    options = options.with_checkpoint_defaults(loaded.checkpoint.decoding_defaults)  # unset bounds: the corpus'
    model, vocab, ckpt, tokenizer = loaded.model, loaded.vocab, loaded.checkpoint, loaded.tokenizer
    options.check_time_signature(vocab)
    controls = options.controls
    controls.check(vocab)  # Chord tokens, the metre, the tempo range: before any sampling
    if options.prompt:
        prompt = load_prompt(options.prompt, tokenizer, options.prompt_bars, options.prompt_seconds,
                             options.prompt_time_signature)
    else:
        prompt = unconditional_prompt(tokenizer)
    if options.infill is not None:
        check_batch_fits(model, len(vocab), int(options.infill_candidates), device, 2 * CONTEXT_TOKENS)
        began = time.perf_counter()
        pieces = [_infilled_piece(index, f"{options.name}_{index:0{_width(options)}d}", filled, tokenizer)
                  for index, filled in enumerate(run_infill(model, tokenizer, options, seed, device, log,
                                                                trained_for_infill(ckpt.config)))]
        rate = sum(len(p.ids) for p in pieces) / max(time.perf_counter() - began, 1e-9)
    elif options.form is not None:
        plan = make_plan(options.form, prompt)
        stop = StopConfig(plan.total_bars, None, None, max(options.max_tokens, TOKENS_PER_BAR * plan.total_bars),
                          False)
        check_batch_fits(model, len(vocab), 1, device, len(prompt.ids) + stop.token_limit + 1)
        began, pieces = time.perf_counter(), []
        for index in range(options.num_samples):  # one at a time: each rewinds at its own bar lines
            session = GenerationSession(model, tokenizer, options.sampling, stop, sample_seed(seed, index), device,
                                        options.guards, planned_controls(options, plan))
            result = run_planned(session, prompt, plan, options.form_recall, progress=options.progress,
                                 on_progress=on_progress)
            piece = _generated_piece(index, f"{options.name}_{index:0{_width(options)}d}", result, tokenizer,
                                     options.include_prompt)
            piece.sections = plan.describe()
            pieces.append(piece)
        rate = sum(len(p.continuation_ids) for p in pieces) / max(time.perf_counter() - began, 1e-9)
    else:
        stop = options.stop
        if not stop.has_musical_limit:
            log(f"no bars/tokens/seconds limit set: stopping at EOS or after max_tokens={stop.max_tokens} tokens")
        check_batch_fits(model, len(vocab), int(options.num_samples), device,
                         len(prompt.ids) + stop.token_limit + 1)
        session = GenerationSession(model, tokenizer, options.sampling, stop, seed, device, options.guards,
                                    controls)
        results = session.run(prompt, int(options.num_samples), progress=options.progress,
                              on_progress=on_progress)
        rate = session.tokens_per_second
        pieces = [_generated_piece(index, f"{options.name}_{index:0{_width(options)}d}", result, tokenizer,
                                   options.include_prompt) for index, result in enumerate(results)]

    folder = Path(options.output_dir) if options.output_dir else None
    if folder is not None:
        make_dir(folder, "output_dir")
    for piece in pieces:
        for warning in piece.warnings:
            log(f"warning: {warning}")
        if folder is not None:
            _write(piece, folder, options, log)
            meta = _metadata(piece, options, seed, ckpt_path, ckpt, prompt, device, rate)
            json_path = folder / f"{piece.name}.json"
            piece.files["json"] = json_path
            meta["files"]["json"] = str(json_path)
            atomic_write_text(json_path, json.dumps(meta, indent=1))
    log(f"seed={seed}: {len(pieces)} piece(s), {sum(len(p.ids) for p in pieces)} tokens at {rate:.0f} tokens/s")
    return pieces
