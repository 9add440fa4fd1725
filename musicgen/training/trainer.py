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
import os
import random
import signal
import socket
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
from ..config import UserError, check_float, check_int, make_dir
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
    #: "finished" (max_steps reached), "stop_at_step" (the train.stop_at_step time-box) or the signal's name
    #: ("SIGTERM", "SIGINT") when a signal stopped the run before max_steps
    stop_reason: str = "finished"

    @property
    def signal_number(self) -> int | None:
        """The signal that stopped the run before max_steps, if one did (train.py exits 128 + this)."""
        return int(getattr(signal, self.stop_reason)) if self.stop_reason.startswith("SIG") else None


class _StopFlag:
    """Set by SIGINT/SIGTERM; the loop finishes the current step, saves, and exits."""

    def __init__(self) -> None:
        self.raised = False
        self.signum: int | None = None
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
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "a signal"

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def batch_indices(step: int, micro: int, grad_accum: int, batch_size: int, rank: int, world: int) -> list[int]:
    """Crop numbers for one micro-batch: disjoint across ranks and steps, a pure function of the step."""
    base = ((step * grad_accum + micro) * world + rank) * batch_size
    return list(range(base, base + batch_size))


def _rng_state() -> dict[str, Any]:
    """Every RNG state as tensors and plain lists, so the checkpoint loads with `weights_only=True`."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "python": {"version": int(version), "internal": [int(x) for x in internal], "gauss": gauss}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `_rng_state`; also reads the tuples of older checkpoints (np.random.get_state() as saved)."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        keys = numpy_state["keys"]
        keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
        numpy_state = (numpy_state["kind"], keys.astype(np.uint32), int(numpy_state["pos"]),
                       int(numpy_state["has_gauss"]), float(numpy_state["cached_gaussian"]))
    np.random.set_state(numpy_state)
    python_state = state["python"]
    if isinstance(python_state, dict):
        python_state = (python_state["version"], tuple(python_state["internal"]), python_state["gauss"])
    else:
        python_state = (python_state[0], tuple(python_state[1]), python_state[2])
    random.setstate(python_state)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


RESUME_CHOICES = "false (a fresh run), true (continue <ckpt_dir>/last.pt), auto (continue it when it exists, " \
                 "else start fresh) or the path of a checkpoint"


def _resume_mode(resume: Any) -> str | Path:
    """train.resume as "false" | "true" | "auto" | a checkpoint Path."""
    if resume in (None, False) or str(resume).lower() in ("false", "none", "null", ""):
        return "false"
    if resume is True or str(resume).lower() == "true":
        return "true"
    if str(resume).lower() == "auto":
        return "auto"
    return Path(str(resume)).expanduser()


def _resume_path(train_cfg: DictConfig, ckpt_dir: Path) -> Path | None:
    """The checkpoint this run continues, or None for a fresh run (see `RESUME_CHOICES`).

    train.resume=true with no last.pt is an error, never a silent fresh start: a typo in train.ckpt_dir (or a
    kill before the first save) would otherwise start from step 0 and overwrite a good best.pt.
    """
    mode = _resume_mode(train_cfg.get("resume"))
    last = ckpt_dir / "last.pt"
    if mode == "false":
        return None
    if mode == "true":
        if not last.is_file():
            raise UserError(f"train.resume=true: nothing to resume, {last} does not exist (check train.ckpt_dir; "
                            "train.resume=auto starts a fresh run when there is no last.pt)")
        return last
    if mode == "auto":
        return last if last.is_file() else None
    if not mode.is_file():
        raise FileNotFoundError(f"train.resume={train_cfg.get('resume')}: no such checkpoint")
    return mode


def ckpt_dir_of(train_cfg: DictConfig, run_dir: Path) -> Path:
    """Where checkpoints go (the same rule as in `_train`)."""
    return Path(str(train_cfg.ckpt_dir)) if train_cfg.get("ckpt_dir") else run_dir / "checkpoints"


class CheckpointDirLock:
    """An exclusive `flock` on `<ckpt_dir>/.lock` for the whole run: two runs never write one folder.

    The kernel drops the lock when the process ends, however it ends (kill -9 included), so a stale
    `.lock` file never blocks a later run. (No locking where `fcntl` is missing, i.e. on Windows.)
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / ".lock"
        self._handle: Any = None

    def acquire(self) -> "CheckpointDirLock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            handle.close()
            raise UserError(f"train.ckpt_dir={self.path.parent} is in use by another training run ({owner}); "
                            "wait for it to finish or pick another train.ckpt_dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file drops the flock
            self._handle = None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers cannot be in use: we are not saving now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_orphaned_temp_files(folder: Path) -> list[Path]:
    """Delete `.<name>.tmp-<pid>` files that a killed save left behind (their writer is gone)."""
    removed = []
    for path in folder.glob(".*.tmp-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if path.is_file() and (not pid.isdigit() or not _pid_alive(int(pid))):
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass
    return removed


def guard_checkpoint_dir(train_cfg: DictConfig, ckpt_dir: Path, is_main: bool) -> CheckpointDirLock | None:
    """Before anything is built: refuse a run that would destroy checkpoints, lock the folder, tidy it.

    - train.resume=true with no last.pt: error (see `_resume_path`);
    - a run that does not continue a checkpoint of this folder, into a folder holding checkpoints (*.pt):
      error, since its first validation would overwrite best.pt and its first save last.pt;
    - another run holding the folder: error (`CheckpointDirLock`);
    - orphaned temp files of killed saves: deleted.
    The lock (rank 0 only; the other ranks never write) is returned for the caller to release.
    """
    resume_from = _resume_path(train_cfg, ckpt_dir)
    continues_here = resume_from is not None and resume_from.resolve().parent == ckpt_dir.resolve()
    if not is_main:
        return None
    make_dir(ckpt_dir, "train.ckpt_dir")
    lock = CheckpointDirLock(ckpt_dir).acquire()
    try:
        removed = remove_orphaned_temp_files(ckpt_dir)
        if removed:
            tqdm.write(f"removed {len(removed)} temporary file(s) left by a killed save in {ckpt_dir}")
        existing = sorted(p.name for p in ckpt_dir.glob("*.pt") if p.is_file())
        if existing and not continues_here:
            resume = _resume_mode(train_cfg.get("resume"))
            why = "a fresh run" if resume_from is None else f"resuming from {resume_from}"
            raise UserError(f"train.ckpt_dir={ckpt_dir} already holds {', '.join(existing)}; {why} would overwrite "
                            f"{'them' if len(existing) > 1 else 'it'}. Continue that run with train.resume=true"
                            f"{'' if resume == 'false' else ' (it needs a last.pt)'}, or pick another train.ckpt_dir")
    except BaseException:
        lock.release()
        raise
    return lock


def validate_train_config(cfg: DictConfig) -> None:
    """Every numeric training option checked before anything runs, each error naming its option."""
    t = cfg.train
    check_int("seed", cfg.get("seed"))
    for name, minimum in (("seq_len", 1), ("batch_size", 1), ("grad_accum", 1), ("max_steps", 1),
                          ("warmup_steps", 0), ("val_every", 1), ("val_batches", 1), ("ckpt_every", 1),
                          ("num_workers", 0)):
        check_int(f"train.{name}", t.get(name), minimum=minimum)
    check_int("train.val_length_factor", t.get("val_length_factor"), minimum=0, allow_none=True)
    check_int("train.val_long_batches", t.get("val_long_batches"), minimum=1, allow_none=True)
    check_int("train.stop_at_step", t.get("stop_at_step"), minimum=1, allow_none=True)
    check_float("train.lr", t.get("lr"), minimum=0.0, exclusive_min=True)
    check_float("train.weight_decay", t.get("weight_decay"), minimum=0.0)
    check_float("train.pe_lr_scale", t.get("pe_lr_scale"), minimum=0.0, allow_none=True)
    check_float("train.min_lr_ratio", t.get("min_lr_ratio"), minimum=0.0, maximum=1.0)
    check_float("train.grad_clip", t.get("grad_clip"), minimum=0.0)
    betas = t.get("betas")
    if betas is None or isinstance(betas, (str, bytes)) or len(list(betas)) != 2:
        raise UserError(f"train.betas must be two numbers in [0, 1), got {betas!r}")
    for i, beta in enumerate(betas):
        if check_float(f"train.betas[{i}]", beta, minimum=0.0) >= 1.0:
            raise UserError(f"train.betas[{i}] must be in [0, 1), got {beta!r}")
    if str(t.get("precision")) not in ("fp32", "bf16", "fp16"):
        raise UserError(f"train.precision={t.get('precision')}: use fp32, bf16 or fp16")
    if not isinstance(t.get("resume"), (bool, str, type(None))):
        raise UserError(f"train.resume={t.get('resume')!r}: use {RESUME_CHOICES}")
    logger = cfg.get("logger") or {}
    if logger.get("log_every") is not None:
        check_int("logger.log_every", logger.get("log_every"), minimum=1)
    data = cfg.get("data") or {}
    check_int("data.max_files", data.get("max_files"), minimum=1, allow_none=True)
    check_int("data.num_workers", data.get("num_workers"), minimum=0, allow_none=True)
    augment = data.get("augment") or {}
    for name in ("transpose", "tempo_shift"):
        check_int(f"data.augment.{name}", augment.get(name), minimum=0, allow_none=True)


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
    """Train according to `cfg` (conf/config.yaml); checkpoints go to train.ckpt_dir or run_dir/checkpoints.

    Options are validated and the checkpoint folder guarded (`guard_checkpoint_dir`) before anything is
    built, so a run that would fail or destroy work stops at once with a one-line error.
    """
    validate_train_config(cfg)
    tcfg = cfg.train
    info = init_distributed(str(cfg.device))
    lock = None
    try:
        lock = guard_checkpoint_dir(tcfg, ckpt_dir_of(tcfg, Path(run_dir)), info.is_main)
        return _train(cfg, tcfg, info, Path(run_dir), progress)
    finally:
        if lock is not None:
            lock.release()
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
    step, interrupted, last_loss, stop_reason = start_step, False, float("nan"), "finished"
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
            signalled = stop.raised
            if info.enabled:  # every rank stops at the same step, or the collective save below would hang
                signalled = bool(all_reduce_mean(torch.tensor(float(stop.raised), device=device), info) > 0)
            if step < max_steps and (signalled or (stop_at is not None and step >= int(stop_at))):
                save_all_ranks("last.pt", step)
                interrupted = True
                stop_reason = stop.name if stop.raised else ("SIGTERM" if signalled else "stop_at_step")
                if info.is_main:
                    why = f"by {stop_reason}" if signalled else f"at train.stop_at_step={int(stop_at)}"
                    tqdm.write(f"stopped {why} before max_steps={max_steps}: saved at step {step} in "
                               f"{ckpt_dir / 'last.pt'}; resume with train.resume=true train.ckpt_dir={ckpt_dir}")
                break
    bar.close()
    logger.finish()
    barrier(info)
    return TrainResult(step, last_loss, best_val, ckpt_dir, interrupted, losses, stop_reason)


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
