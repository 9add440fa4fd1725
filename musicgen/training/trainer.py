"""The training loop: AdamW, warm-up + cosine, clipping, accumulation, autocast, DDP, checkpoints, resume.

Exact resumption: item numbers of the training crops are a function of the step (see `batch_indices`),
every RNG state is checkpointed, and SIGINT/SIGTERM (or `train.stop_at_step`) save `last.pt` before exiting.
So a run interrupted and resumed ends with the same parameters as one that ran straight through.

Work is never destroyed silently: before anything is built the options are validated and the checkpoint
folder is guarded (`guard_checkpoint_dir`): train.resume=true with nothing to resume, or a fresh run into a
folder that holds checkpoints, is a one-line error; the folder is locked for the run; temp files of killed
saves are removed. `TrainResult.stop_reason` says whether the run reached max_steps, stopped at
train.stop_at_step, or was stopped by a signal (train.py then exits 128 + the signal number).
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
import yaml
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..config import UserError
from ..data import Augmenter, RandomCrops, SequentialCrops, TokenCache, prepare_corpus
from ..evaluation.likelihood import NATS_PER_BIT, extrapolation_edges, position_nll
from ..inference import Checkpoint, load_checkpoint
from ..model import build_model
from ..inference.checkpoint import save_checkpoint
from .distributed import DistInfo, all_reduce_mean, barrier, init_distributed, shutdown
from .loggers import RunLogger
from ..inference.parameters import positional_parameters
from .optim import make_optimizer
from .options import TrainOptions
from .run_config import RunConfig
from .rng import rng_state, seed_everything, set_rng_state
from .rundir import ckpt_dir_of, guard_checkpoint_dir, resume_path
from .schedule import warmup_cosine
from ..data.stats import read_corpus_statistics
from .signals import StopFlag


@dataclass
class TrainResult:
    step: int
    last_loss: float
    best_val_nll: float | None
    ckpt_dir: Path
    interrupted: bool
    losses: list[float]
    #: "finished" (max_steps reached), "stop_at_step" (the train.stop_at_step time-box), "time_limit"
    #: (train.time_limit_minutes), "early_stop"
    #: (train.early_stop_patience validations without a better NLL) or the signal's name
    #: ("SIGTERM", "SIGINT") when a signal stopped the run before max_steps
    stop_reason: str = "finished"

    @property
    def signal_number(self) -> int | None:
        """The signal that stopped the run before max_steps, if one did (train.py exits 128 + this)."""
        return int(getattr(signal, self.stop_reason)) if self.stop_reason.startswith("SIG") else None


def batch_indices(step: int, micro: int, grad_accum: int, batch_size: int, rank: int, world: int) -> list[int]:
    """Crop numbers for one micro-batch: disjoint across ranks and steps, a pure function of the step."""
    base = ((step * grad_accum + micro) * world + rank) * batch_size
    return list(range(base, base + batch_size))


def validate_train_config(cfg: RunConfig | Mapping[str, Any]) -> RunConfig:
    """Every option of the run checked before anything runs, each error naming its option (`RunConfig`)."""
    return RunConfig.from_mapping(cfg)


def _check_compatible(ckpt: Checkpoint, model_config: dict[str, Any], vocab_tokens: list[str]) -> None:
    """A checkpoint from another vocabulary or model shape is a one-line error, not a silent mismatch."""
    if ckpt.vocab.tokens != vocab_tokens:
        raise ValueError(f"checkpoint {ckpt.path} was trained with a different vocabulary "
                         f"({ckpt.vocab.fingerprint}) than this corpus/tokenizer config")
    diff = sorted(k for k in set(model_config) | set(ckpt.model_config)
                  if model_config.get(k) != ckpt.model_config.get(k))
    if diff:
        detail = ", ".join(f"{k}: {ckpt.model_config.get(k)!r} -> {model_config.get(k)!r}" for k in diff[:4])
        raise ValueError(f"checkpoint {ckpt.path} has a different model shape ({detail})")


def _autocast(device: torch.device, precision: str):
    if precision == "fp32" or device.type != "cuda":
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def run_training(cfg: RunConfig | Mapping[str, Any], run_dir: str | Path, progress: bool = True) -> TrainResult:
    """Train according to `cfg` (conf/config.yaml composed: a `RunConfig` or the Hydra config it is made from);
    checkpoints go to train.ckpt_dir or run_dir/checkpoints.

    Options are validated (`RunConfig`) and the checkpoint folder guarded (`guard_checkpoint_dir`) before
    anything is built, so a run that would fail or destroy work stops at once with a one-line error.
    """
    config = validate_train_config(cfg)
    info = init_distributed(config.device)
    lock = None
    try:
        lock = guard_checkpoint_dir(config.train, ckpt_dir_of(config.train, Path(run_dir)), info.is_main)
        return _train(config, info, Path(run_dir), progress)
    finally:
        if lock is not None:
            lock.release()
        shutdown(info)


class _NonFiniteLoss(UserError):
    """A NaN/inf training loss: the run stops with a one-line message (too high a learning rate, fp16), the last
    good checkpoint kept."""


@dataclass
class _Run:
    """Everything one training run holds, built by `_setup` (and `_resume`), used by the loop's parts."""

    config: RunConfig
    opts: TrainOptions  # config.train
    info: DistInfo
    ckpt_dir: Path
    precision: str
    vocab: Any
    core: torch.nn.Module  # the model itself (what is saved)
    model_config: dict[str, Any]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    config_dict: Any
    positional_init: dict[str, torch.Tensor]
    model: torch.nn.Module | None = None  # what is called: `core`, or its DDP wrapper
    train_set: RandomCrops | None = None
    val_set: SequentialCrops | None = None
    long_set: SequentialCrops | None = None
    factor: int = 0  # train.val_length_factor (0 = no long validation)
    logger: RunLogger | None = None
    start_step: int = 0
    best_val: float | None = None
    corpus_stats: dict[str, Any] | None = None  # the training corpus' statistics, stored in every checkpoint
    bad_validations: int = 0  # validations in a row without a new best (train.early_stop_patience)


def _setup(config: RunConfig, info: DistInfo, run_dir: Path, progress: bool) -> _Run:
    """Corpus, model, optimizer, schedule, the resumed state, the datasets and the logger (in this order, so the
    random draws, and hence the run, do not depend on whether it was resumed)."""
    opts = config.train
    device = info.device
    precision = opts.precision
    if precision != "fp32" and device.type != "cuda":
        if info.is_main:
            tqdm.write(f"train.precision={precision} needs CUDA; training in fp32 on {device}")
        precision = "fp32"
    ckpt_dir = ckpt_dir_of(opts, run_dir)

    # Corpus: rank 0 prepares (or validates) the cache, the others wait and open it.
    if info.is_main:
        cache = prepare_corpus(config.data, config.tokenizer, progress=progress)
    barrier(info)
    if not info.is_main:
        cache = TokenCache(config.data.cache_dir)
    vocab = cache.vocab
    corpus_stats = read_corpus_statistics(cache) if info.is_main else None

    seed_everything(config.seed)
    model = build_model(config.model, len(vocab), time_markers=vocab.time_markers()).to(device)
    positional_init = positional_parameters(model)  # where the positional parameters started (diagnostics)
    if opts.init_from and resume_path(opts, ckpt_dir) is None:
        positional_init = _init_from(model, opts.init_from, vocab.tokens, info.is_main)
    if opts.train_only:
        _freeze_all_but(model, opts.train_only, info.is_main)
    optimizer = make_optimizer(model, opts.lr, opts.weight_decay, opts.betas, opts.pe_lr_scale or 1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, opts.warmup_steps, opts.max_steps, opts.min_lr_ratio))
    run = _Run(config, opts, info, ckpt_dir, precision, vocab, model, dict(model.config), optimizer, scheduler,
               torch.amp.GradScaler("cuda", enabled=precision == "fp16"), config.to_dict(),
               positional_init)
    run.corpus_stats = corpus_stats
    resume_from = resume_path(opts, ckpt_dir)
    if resume_from is not None:
        _resume(run, resume_from)

    augment = config.data.augment
    run.train_set = RandomCrops(cache, "train", opts.seq_len, Augmenter(vocab, augment.transpose, augment.tempo_shift),
                                seed=config.seed, metre_context=config.data.crop_metre, fim_rate=opts.fim_rate)
    run.val_set = SequentialCrops(cache, "valid", opts.seq_len) if cache.split("valid") else None
    run.factor = opts.val_length_factor or 0
    if run.val_set and run.factor > 1:
        run.long_set = SequentialCrops(cache, "valid", opts.seq_len * run.factor, first_only=True)
    run.model = model
    if info.enabled:
        run.model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if info.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        (ckpt_dir / "config.yaml").write_text(yaml.safe_dump(run.config_dict, sort_keys=False))
        vocab.save(ckpt_dir / "vocab.json")
    run.logger = RunLogger(config.logger, run_dir, run.config_dict, enabled=info.is_main)
    return run


def _resume(run: _Run, path: Path) -> None:
    """Continue `path` exactly: weights, optimizer, schedule, scaler, this rank's RNG states, step, best NLL."""
    ckpt = load_checkpoint(path, map_location="cpu")
    _check_compatible(ckpt, run.model_config, run.vocab.tokens)
    if "optimizer" not in ckpt.training_state:
        raise ValueError(f"checkpoint {path} has no optimizer state (an inference export); "
                         "it cannot resume training")
    try:  # everything restored here comes from the file: a failure is the file's (or this run's options')
        run.core.load_state_dict(ckpt.model_state)
        run.optimizer.load_state_dict(ckpt.training_state["optimizer"])
        run.scheduler.load_state_dict(ckpt.training_state["scheduler"])
        if "scaler" in ckpt.training_state:
            run.scaler.load_state_dict(ckpt.training_state["scaler"])
        rng = ckpt.training_state["rng"]
        set_rng_state(rng[min(run.info.rank, len(rng) - 1)])
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
        detail = " ".join(str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc).split())[:200]
        raise UserError(f"checkpoint {path}: its training state cannot be restored ({type(exc).__name__}: {detail}); "
                        "the file is damaged, or this run's options (train.train_only, train.pe_lr_scale ...) differ "
                        "from the run that wrote it") from None
    run.start_step, run.best_val = ckpt.step, ckpt.best_val_nll
    run.positional_init = ckpt.training_state.get("positional_init", run.positional_init)
    if run.info.is_main:
        tqdm.write(f"resumed from {path} at step {run.start_step}")


def _save(run: _Run, name: str, step: int) -> None:
    """Write `name` (last.pt / best.pt) on rank 0 with every rank's RNG state; every rank must call it (the
    gather of RNG states is collective)."""
    info = run.info
    if info.enabled and not info.is_main:
        torch.distributed.all_gather_object([None] * info.world_size, rng_state())
        return
    rng_states = [rng_state()]
    if info.enabled:  # every rank's RNG, so each resumes its own dropout/noise stream
        gathered: list[Any] = [None] * info.world_size
        torch.distributed.all_gather_object(gathered, rng_states[0])
        rng_states = gathered
    state = {"optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(), "rng": rng_states,
             "positional_init": run.positional_init}
    if run.precision == "fp16":
        state["scaler"] = run.scaler.state_dict()
    save_checkpoint(run.ckpt_dir / name, model_config=run.model_config, model_state=run.core.state_dict(),
                    vocab=run.vocab, config=run.config_dict, step=step, best_val_nll=run.best_val,
                    train_seq_len=run.opts.seq_len, training_state=state, corpus_stats=run.corpus_stats)


def _step(run: _Run, step: int) -> tuple[float, torch.Tensor, int]:
    """One optimizer step (with gradient accumulation) -> (mean loss over ranks, gradient norm, target tokens
    of this rank). A non-finite loss stops the run, the last good checkpoint kept."""
    opts, info, device, model = run.opts, run.info, run.info.device, run.model
    run.optimizer.zero_grad(set_to_none=True)
    loss_sum = torch.zeros((), device=device)
    tokens = 0
    for micro in range(opts.grad_accum):
        batch = torch.stack([run.train_set[i] for i in batch_indices(
            step, micro, opts.grad_accum, opts.batch_size, info.rank, info.world_size)]).to(device)
        inputs, targets = batch[:, :-1], batch[:, 1:]
        # DDP all-reduces gradients only on the last micro-batch of an accumulated step.
        last_micro = micro == opts.grad_accum - 1 or not info.enabled
        with model.no_sync() if not last_micro else contextlib.nullcontext():
            with _autocast(device, run.precision):
                logits = model(inputs)
                loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                                       ignore_index=run.vocab.pad_id) / opts.grad_accum
            run.scaler.scale(loss).backward()
        loss_sum += loss.detach()
        tokens += int((targets != run.vocab.pad_id).sum())
    loss_value = float(all_reduce_mean(loss_sum, info))
    if not math.isfinite(loss_value):
        raise _NonFiniteLoss(f"training stopped: loss is {loss_value} at step {step + 1}; the last good "
                           f"checkpoint is kept in {run.ckpt_dir} (lower train.lr or use train.precision=fp32)")
    run.scaler.unscale_(run.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(run.core.parameters(),
                                               opts.grad_clip if opts.grad_clip > 0 else float("inf"))
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    return loss_value, grad_norm, tokens


def _validate_and_keep_best(run: _Run, step: int) -> None:
    """Validation metrics logged on rank 0; best.pt written when the validation NLL improved."""
    metrics = _validate(run.core, run.val_set, run.long_set, run.opts, run.info.device, run.vocab.pad_id,
                        run.opts.seq_len, run.factor, run.info)
    if run.info.is_main:
        run.logger.log(metrics, step, console=True)
    if run.best_val is None or metrics["val/nll_nats"] < run.best_val - run.opts.early_stop_min_delta:
        run.best_val = metrics["val/nll_nats"]
        run.bad_validations = 0
        _save(run, "best.pt", step)
    else:
        run.bad_validations += 1


def _train(config: RunConfig, info: DistInfo, run_dir: Path, progress: bool) -> TrainResult:
    """The loop: step, log, validate, save, and stop at max_steps, train.stop_at_step or a signal."""
    run = _setup(config, info, run_dir, progress)
    opts = run.opts
    max_steps, stop_at, logger = opts.max_steps, opts.stop_at_step, run.logger
    losses: list[float] = []
    step, interrupted, last_loss, stop_reason = run.start_step, False, float("nan"), "finished"
    bar = tqdm(total=max_steps, initial=run.start_step, desc="train", disable=not (progress and info.is_main),
               unit="step", dynamic_ncols=True)
    tokens_seen, t0 = 0, time.perf_counter()
    deadline = t0 + 60.0 * opts.time_limit_minutes if opts.time_limit_minutes else None
    run.model.train()
    with StopFlag() as stop:
        while step < max_steps:
            try:
                loss_value, grad_norm, tokens = _step(run, step)
            except _NonFiniteLoss:
                bar.close()
                logger.finish()
                raise
            tokens_seen += tokens
            step += 1
            last_loss = loss_value
            losses.append(loss_value)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{run.scheduler.get_last_lr()[0]:.2e}")
            if step % config.logger.log_every == 0 or step == max_steps:
                elapsed = time.perf_counter() - t0
                logger.log({"train/loss_nats": loss_value, "train/loss_bits": loss_value / NATS_PER_BIT,
                            "lr": run.scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                            "tokens_per_s": tokens_seen * info.world_size / max(elapsed, 1e-9)}, step)
                tokens_seen, t0 = 0, time.perf_counter()
            if run.val_set is not None and (step % opts.val_every == 0 or step == max_steps):
                _validate_and_keep_best(run, step)
                if opts.early_stop_patience and run.bad_validations >= opts.early_stop_patience \
                        and step < max_steps:
                    _save(run, "last.pt", step)
                    stop_reason = "early_stop"
                    if info.is_main:
                        tqdm.write(f"early stop at step {step}: no better validation NLL in "
                                   f"{run.bad_validations} validations (train.early_stop_patience); best "
                                   f"{run.best_val:.4f} nats/token in {run.ckpt_dir / 'best.pt'}")
                    break
            if step % opts.ckpt_every == 0 or step == max_steps:
                _save(run, "last.pt", step)
            if deadline is not None and step < max_steps and time.perf_counter() > deadline:
                _save(run, "last.pt", step)
                stop_reason = "time_limit"
                if info.is_main:
                    tqdm.write(f"time limit: stopped at step {step} after train.time_limit_minutes="
                               f"{opts.time_limit_minutes:g} (best.pt keeps the best validation NLL)")
                break
            signalled = stop.raised
            if info.enabled:  # every rank stops at the same step, or the collective save below would hang
                signalled = bool(all_reduce_mean(torch.tensor(float(stop.raised), device=info.device), info) > 0)
            if step < max_steps and (signalled or (stop_at is not None and step >= stop_at)):
                _save(run, "last.pt", step)
                interrupted = True
                stop_reason = stop.name if stop.raised else ("SIGTERM" if signalled else "stop_at_step")
                if info.is_main:
                    why = f"by {stop_reason}" if signalled else f"at train.stop_at_step={stop_at}"
                    tqdm.write(f"stopped {why} before max_steps={max_steps}: saved at step {step} in "
                               f"{run.ckpt_dir / 'last.pt'}; resume with train.resume=true "
                               f"train.ckpt_dir={run.ckpt_dir}")
                break
    bar.close()
    logger.finish()
    barrier(info)
    return TrainResult(step, last_loss, run.best_val, run.ckpt_dir, interrupted, losses, stop_reason)


def _freeze_all_but(model: torch.nn.Module, prefixes: tuple[str, ...], verbose: bool) -> None:
    """``train.train_only``: only the parameters under these name prefixes learn (the optimizer skips the rest,
    and autograd records nothing for a frozen stack, so training a head on it costs about a forward pass)."""
    trained = 0
    for name, p in model.named_parameters():
        p.requires_grad_(any(name == pre or name.startswith(pre + ".") for pre in prefixes))
        trained += p.numel() if p.requires_grad else 0
    if not trained:
        raise UserError(f"train.train_only={list(prefixes)}: no parameter of this model starts with these names")
    if verbose:
        total = sum(p.numel() for p in model.parameters())
        tqdm.write(f"training {trained:,} of {total:,} parameters (train.train_only={list(prefixes)})")


def _init_from(model: torch.nn.Module, path: str, vocab_tokens: list[str], verbose: bool) -> dict[str, torch.Tensor]:
    """Fine-tune: start from another checkpoint's weights (``train.init_from``), step 0, fresh optimizer.

    Parameters the source does not have (e.g. ``attention.decay`` added to a model trained without it)
    keep their fresh initialisation and are reported; any other difference is an error. Returns the
    positional parameters' starting values to measure how far training moves them: the source's own
    record of its initialisation when it has one, else the values it starts this run with.
    """
    ckpt = load_checkpoint(path, map_location="cpu")
    if ckpt.vocab.tokens != vocab_tokens:
        raise ValueError(f"train.init_from={path}: trained with a different vocabulary than this corpus")
    state = {k: v.float() if torch.is_floating_point(v) else v for k, v in ckpt.model_state.items()}
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(state) & set(own) if state[k].shape != own[k].shape)
    if unexpected or shape:
        raise ValueError(f"train.init_from={path}: weights do not fit this model "
                         f"({', '.join((unexpected + shape)[:4])})")
    missing = sorted(set(own) - set(state))
    model.load_state_dict(state, strict=False)
    if verbose:
        new = f"; new parameters keep their initialisation: {', '.join(missing)}" if missing else ""
        tqdm.write(f"initialised from {path} (step {ckpt.step}){new}")
    start = positional_parameters(model)
    start.update(ckpt.training_state.get("positional_init") or {})
    return start


def _validate(model: torch.nn.Module, val_set: SequentialCrops, long_set: SequentialCrops | None,
              opts: TrainOptions, device: torch.device, pad_id: int, seq_len: int, factor: int,
              info: DistInfo) -> dict[str, float]:
    """Validation NLL on fixed crops (+ per-position buckets on long crops), the same on every rank."""
    batch = opts.batch_size
    result = position_nll(model, val_set, batch, device, pad_id, max_batches=opts.val_batches)
    metrics = {"val/nll_nats": result.mean, "val/nll_bits": result.mean / NATS_PER_BIT}
    if long_set is not None and len(long_set):
        long = position_nll(model, long_set, max(1, batch // factor), device, pad_id,
                            max_batches=opts.val_long_batches or 8)
        for name, value in long.buckets([0, seq_len // 2] + extrapolation_edges(seq_len, factor)[1:]).items():
            metrics[f"val_by_position/nll_nats{name}"] = value
    return metrics
