"""The training loop: AdamW, warm-up + cosine, clipping, accumulation, autocast, DDP, checkpoints, resume.

Exact resumption: item numbers of the training crops are a function of the step (see `batch_indices`),
every RNG state is checkpointed, and SIGINT/SIGTERM (or `train.stop_at_step`) save `last.pt` before exiting.
So a run interrupted and resumed ends with the same parameters as one that ran straight through.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..data import Augmenter, RandomCrops, SequentialCrops, TokenCache, prepare_corpus
from ..evaluation.likelihood import NATS_PER_BIT, extrapolation_edges, position_nll
from ..model import build_model
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .distributed import DistInfo, all_reduce_mean, barrier, init_distributed, shutdown
from .loggers import RunLogger
from .optim import make_optimizer, positional_parameters
from .schedule import warmup_cosine


@dataclass
class TrainResult:
    step: int
    last_loss: float
    best_val_nll: float | None
    ckpt_dir: Path
    interrupted: bool
    losses: list[float]


class _StopFlag:
    """Set by SIGINT/SIGTERM; the loop finishes the current step, saves, and exits."""

    def __init__(self) -> None:
        self.raised = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.raised = True

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def batch_indices(step: int, micro: int, grad_accum: int, batch_size: int, rank: int, world: int) -> list[int]:
    """Crop numbers for one micro-batch: disjoint across ranks and steps, a pure function of the step."""
    base = ((step * grad_accum + micro) * world + rank) * batch_size
    return list(range(base, base + batch_size))


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _resume_path(train_cfg: DictConfig, ckpt_dir: Path) -> Path | None:
    resume = train_cfg.get("resume")
    if resume in (None, False, "false", "False"):
        return None
    if resume is True or str(resume).lower() == "true":
        path = ckpt_dir / "last.pt"
        return path if path.exists() else None
    path = Path(str(resume))
    if not path.is_file():
        raise FileNotFoundError(f"train.resume={resume}: no such checkpoint")
    return path


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


def run_training(cfg: DictConfig, run_dir: str | Path, progress: bool = True) -> TrainResult:
    """Train according to `cfg` (conf/config.yaml); checkpoints go to train.ckpt_dir or run_dir/checkpoints."""
    tcfg = cfg.train
    info = init_distributed(str(cfg.device))
    try:
        return _train(cfg, tcfg, info, Path(run_dir), progress)
    finally:
        shutdown(info)


def _train(cfg: DictConfig, tcfg: DictConfig, info: DistInfo, run_dir: Path, progress: bool) -> TrainResult:
    device = info.device
    precision = str(tcfg.precision)
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"train.precision={precision}: use fp32, bf16 or fp16")
    if precision != "fp32" and device.type != "cuda":
        if info.is_main:
            tqdm.write(f"train.precision={precision} needs CUDA; training in fp32 on {device}")
        precision = "fp32"
    ckpt_dir = Path(str(tcfg.ckpt_dir)) if tcfg.get("ckpt_dir") else run_dir / "checkpoints"

    # Corpus: rank 0 prepares (or validates) the cache, the others wait and open it.
    if info.is_main:
        cache = prepare_corpus(cfg.data, cfg.tokenizer, progress=progress)
    barrier(info)
    if not info.is_main:
        cache = TokenCache(str(cfg.data.cache_dir))
    vocab = cache.vocab

    seed_everything(int(cfg.seed))
    model = build_model(cfg.model, len(vocab)).to(device)
    model_config = dict(model.config)
    positional_init = positional_parameters(model)  # where the positional parameters started (diagnostics)
    if tcfg.get("init_from") and _resume_path(tcfg, ckpt_dir) is None:
        positional_init = _init_from(model, str(tcfg.init_from), vocab.tokens, info.is_main)
    optimizer = make_optimizer(model, float(tcfg.lr), float(tcfg.weight_decay),
                               tuple(float(b) for b in tcfg.betas), float(tcfg.get("pe_lr_scale") or 1.0))
    max_steps = int(tcfg.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, int(tcfg.warmup_steps), max_steps, float(tcfg.min_lr_ratio)))
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    config_dict = OmegaConf.to_container(cfg, resolve=True)

    start_step, best_val = 0, None
    resume_path = _resume_path(tcfg, ckpt_dir)
    if resume_path is not None:
        ckpt = load_checkpoint(resume_path, map_location="cpu")
        _check_compatible(ckpt, model_config, vocab.tokens)
        if "optimizer" not in ckpt.training_state:
            raise ValueError(f"checkpoint {resume_path} has no optimizer state (an inference export); "
                             "it cannot resume training")
        model.load_state_dict(ckpt.model_state)
        optimizer.load_state_dict(ckpt.training_state["optimizer"])
        scheduler.load_state_dict(ckpt.training_state["scheduler"])
        if "scaler" in ckpt.training_state:
            scaler.load_state_dict(ckpt.training_state["scaler"])
        _set_rng_state(ckpt.training_state["rng"][min(info.rank, len(ckpt.training_state["rng"]) - 1)])
        start_step, best_val = ckpt.step, ckpt.best_val_nll
        positional_init = ckpt.training_state.get("positional_init", positional_init)
        if info.is_main:
            tqdm.write(f"resumed from {resume_path} at step {start_step}")

    seq_len = int(tcfg.seq_len)
    augment = cfg.data.get("augment") or {}
    train_set = RandomCrops(cache, "train", seq_len,
                            Augmenter(vocab, int(augment.get("transpose", 0)), int(augment.get("tempo_shift", 0))),
                            seed=int(cfg.seed))
    val_set = SequentialCrops(cache, "valid", seq_len) if cache.split("valid") else None
    factor = int(tcfg.get("val_length_factor") or 0)
    long_set = SequentialCrops(cache, "valid", seq_len * factor, first_only=True) if val_set and factor > 1 else None

    core = model
    if info.enabled:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if info.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        (ckpt_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        vocab.save(ckpt_dir / "vocab.json")
    logger = RunLogger(cfg.logger, run_dir, config_dict, enabled=info.is_main)

    def save(name: str, step: int) -> None:
        if not info.is_main:
            return
        rng_states = [_rng_state()]
        if info.enabled:  # every rank's RNG, so each resumes its own dropout/noise stream
            gathered: list[Any] = [None] * info.world_size
            torch.distributed.all_gather_object(gathered, rng_states[0])
            rng_states = gathered
        state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_states,
                 "positional_init": positional_init}
        if precision == "fp16":
            state["scaler"] = scaler.state_dict()
        save_checkpoint(ckpt_dir / name, model_config=model_config, model_state=core.state_dict(), vocab=vocab,
                        config=config_dict, step=step, best_val_nll=best_val, train_seq_len=seq_len,
                        training_state=state)

    def save_all_ranks(name: str, step: int) -> None:
        # all_gather_object is collective: every rank must enter it.
        if info.enabled and not info.is_main:
            torch.distributed.all_gather_object([None] * info.world_size, _rng_state())
            return
        save(name, step)

    grad_accum, batch_size = int(tcfg.grad_accum), int(tcfg.batch_size)
    log_every = int(cfg.logger.get("log_every", 10))
    stop_at = tcfg.get("stop_at_step")
    losses: list[float] = []
    step, interrupted, last_loss = start_step, False, float("nan")
    bar = tqdm(total=max_steps, initial=start_step, desc="train", disable=not (progress and info.is_main),
               unit="step", dynamic_ncols=True)
    tokens_seen, t0 = 0, time.perf_counter()
    model.train()
    with _StopFlag() as stop:
        while step < max_steps:
            optimizer.zero_grad(set_to_none=True)
            loss_sum = torch.zeros((), device=device)
            for micro in range(grad_accum):
                batch = torch.stack([train_set[i] for i in batch_indices(
                    step, micro, grad_accum, batch_size, info.rank, info.world_size)]).to(device)
                inputs, targets = batch[:, :-1], batch[:, 1:]
                # DDP all-reduces gradients only on the last micro-batch of an accumulated step.
                last_micro = micro == grad_accum - 1 or not info.enabled
                with model.no_sync() if not last_micro else contextlib.nullcontext():
                    with _autocast(device, precision):
                        logits = model(inputs)
                        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                                               ignore_index=vocab.pad_id) / grad_accum
                    scaler.scale(loss).backward()
                loss_sum += loss.detach()
                tokens_seen += int((targets != vocab.pad_id).sum())
            loss_value = float(all_reduce_mean(loss_sum, info))
            if not math.isfinite(loss_value):
                bar.close()
                logger.finish()
                raise RuntimeError(f"training stopped: loss is {loss_value} at step {step + 1}; the last good "
                                   f"checkpoint is kept in {ckpt_dir} (lower train.lr or use train.precision=fp32)")
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(
                core.parameters(), float(tcfg.grad_clip) if float(tcfg.grad_clip) > 0 else float("inf"))
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            last_loss = loss_value
            losses.append(loss_value)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if step % log_every == 0 or step == max_steps:
                elapsed = time.perf_counter() - t0
                logger.log({"train/loss_nats": loss_value, "train/loss_bits": loss_value / NATS_PER_BIT,
                            "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                            "tokens_per_s": tokens_seen * info.world_size / max(elapsed, 1e-9)}, step)
                tokens_seen, t0 = 0, time.perf_counter()
            if val_set is not None and (step % int(tcfg.val_every) == 0 or step == max_steps):
                metrics = _validate(core, val_set, long_set, tcfg, device, vocab.pad_id, seq_len, factor, info)
                if info.is_main:
                    logger.log(metrics, step, console=True)
                if best_val is None or metrics["val/nll_nats"] < best_val:
                    best_val = metrics["val/nll_nats"]
                    save_all_ranks("best.pt", step)
            if step % int(tcfg.ckpt_every) == 0 or step == max_steps:
                save_all_ranks("last.pt", step)
            if stop.raised or (stop_at is not None and step >= int(stop_at) and step < max_steps):
                save_all_ranks("last.pt", step)
                interrupted = True
                if info.is_main:
                    tqdm.write(f"stopped at step {step}; saved {ckpt_dir / 'last.pt'}; continue with "
                               f"train.resume=true train.ckpt_dir={ckpt_dir}")
                break
    bar.close()
    logger.finish()
    barrier(info)
    return TrainResult(step, last_loss, best_val, ckpt_dir, interrupted, losses)


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
              tcfg: DictConfig, device: torch.device, pad_id: int, seq_len: int, factor: int,
              info: DistInfo) -> dict[str, float]:
    """Validation NLL on fixed crops (+ per-position buckets on long crops), the same on every rank."""
    batch = int(tcfg.batch_size)
    result = position_nll(model, val_set, batch, device, pad_id, max_batches=int(tcfg.val_batches))
    metrics = {"val/nll_nats": result.mean, "val/nll_bits": result.mean / NATS_PER_BIT}
    if long_set is not None and len(long_set):
        long = position_nll(model, long_set, max(1, batch // factor), device, pad_id,
                            max_batches=int(tcfg.get("val_long_batches") or 8))
        for name, value in long.buckets([0, seq_len // 2] + extrapolation_edges(seq_len, factor)[1:]).items():
            metrics[f"val_by_position/nll_nats{name}"] = value
    return metrics
