"""`TrainOptions`: the training loop's settings, read from the Hydra config and validated once, at the edge.

conf/train/default.yaml documents every `train.*` field (same names) and holds the defaults; `seed`,
`logger.log_every` and `data.augment.*` come from their own groups. Every error names its option
(`train.ckpt_every must be an integer >= 1, got 0`) and is raised before anything is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import UserError, check_bool, check_float, check_int

RESUME_CHOICES = "false (a fresh run), true (continue <ckpt_dir>/last.pt), auto (continue it when it exists, " \
                 "else start fresh) or the path of a checkpoint"
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class TrainOptions:
    """Validated training settings (see the module docstring)."""

    seq_len: int
    batch_size: int
    grad_accum: int
    max_steps: int
    lr: float
    weight_decay: float
    betas: tuple[float, float]
    warmup_steps: int
    min_lr_ratio: float
    grad_clip: float
    precision: str
    val_every: int
    val_batches: int
    ckpt_every: int
    num_workers: int
    seed: int
    pe_lr_scale: float | None = None
    val_length_factor: int | None = None
    val_long_batches: int | None = None
    stop_at_step: int | None = None
    ckpt_dir: str | None = None
    init_from: str | None = None
    train_only: tuple[str, ...] | None = None
    resume: bool | str | None = False
    log_every: int = 10
    early_stop_patience: int = 0
    early_stop_min_delta: float = 0.0
    time_limit_minutes: float | None = None
    crop_metre: bool = False
    fim_rate: float = 0.0
    transpose: int = 0
    tempo_shift: int = 0

    @classmethod
    def from_config(cls, cfg: Any) -> "TrainOptions":
        """From the whole run config (conf/config.yaml): `train.*`, `seed`, `logger.log_every`, `data.*`."""
        t = cfg.train
        seed = check_int("seed", cfg.get("seed"), minimum=0, maximum=2**32 - 1)  # numpy's seed range
        counts = {name: check_int(f"train.{name}", t.get(name), minimum=minimum)
                  for name, minimum in (("seq_len", 1), ("batch_size", 1), ("grad_accum", 1), ("max_steps", 1),
                                        ("warmup_steps", 0), ("val_every", 1), ("val_batches", 1),
                                        ("ckpt_every", 1), ("num_workers", 0))}
        optional = {name: check_int(f"train.{name}", t.get(name), minimum=minimum, allow_none=True)
                    for name, minimum in (("val_length_factor", 0), ("val_long_batches", 1), ("stop_at_step", 1))}
        lr = check_float("train.lr", t.get("lr"), minimum=0.0, exclusive_min=True)
        weight_decay = check_float("train.weight_decay", t.get("weight_decay"), minimum=0.0)
        pe_lr_scale = check_float("train.pe_lr_scale", t.get("pe_lr_scale"), minimum=0.0, allow_none=True)
        min_lr_ratio = check_float("train.min_lr_ratio", t.get("min_lr_ratio"), minimum=0.0, maximum=1.0)
        grad_clip = check_float("train.grad_clip", t.get("grad_clip"), minimum=0.0)
        betas = t.get("betas")
        if betas is None or isinstance(betas, (str, bytes)) or len(list(betas)) != 2:
            raise UserError(f"train.betas must be two numbers in [0, 1), got {betas!r}")
        for i, beta in enumerate(betas):
            if check_float(f"train.betas[{i}]", beta, minimum=0.0) >= 1.0:
                raise UserError(f"train.betas[{i}] must be in [0, 1), got {beta!r}")
        if str(t.get("precision")) not in PRECISIONS:
            raise UserError(f"train.precision={t.get('precision')}: use fp32, bf16 or fp16")
        if not isinstance(t.get("resume"), (bool, str, type(None))):
            raise UserError(f"train.resume={t.get('resume')!r}: use {RESUME_CHOICES}")
        if cfg.get("model") is not None:  # every model option now, not a checkpoint without layers later
            from ..model.config import ModelConfig

            try:
                ModelConfig.from_mapping(cfg.model)
            except (ValueError, KeyError, TypeError) as exc:
                message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
                raise UserError(message) from None
        early = {"early_stop_patience": check_int("train.early_stop_patience", t.get("early_stop_patience", 0) or 0,
                                                   minimum=0),
                 "early_stop_min_delta": check_float("train.early_stop_min_delta",
                                                     t.get("early_stop_min_delta", 0.0) or 0.0, minimum=0.0),
                 "time_limit_minutes": check_float("train.time_limit_minutes", t.get("time_limit_minutes"),
                                                   minimum=0.0, exclusive_min=True, allow_none=True)}
        fim_rate = check_float("train.fim_rate", t.get("fim_rate", 0.0) or 0.0, minimum=0.0, maximum=1.0)
        train_only = t.get("train_only")
        if train_only is not None:
            if isinstance(train_only, (str, bytes)) or not all(isinstance(p, str) and p for p in train_only) \
                    or not len(train_only):
                raise UserError(f"train.train_only={train_only!r}: expected null or a list of parameter-name "
                                "prefixes, e.g. [recall]")
            train_only = tuple(str(p) for p in train_only)
        logger = cfg.get("logger") or {}
        log_every = 10
        if logger.get("log_every") is not None:
            log_every = check_int("logger.log_every", logger.get("log_every"), minimum=1)
        data = cfg.get("data") or {}
        check_int("data.max_files", data.get("max_files"), minimum=1, allow_none=True)
        check_int("data.num_workers", data.get("num_workers"), minimum=0, allow_none=True)
        if data.get("download") is not None:
            check_bool("data.download", data.get("download"))
        crop_metre = check_bool("data.crop_metre", data.get("crop_metre") or False)
        augment = data.get("augment") or {}
        shifts = {name: check_int(f"data.augment.{name}", augment.get(name), minimum=0, allow_none=True) or 0
                  for name in ("transpose", "tempo_shift")}
        return cls(**counts, **optional, lr=lr, weight_decay=weight_decay, pe_lr_scale=pe_lr_scale,
                   min_lr_ratio=min_lr_ratio, grad_clip=grad_clip, betas=(float(betas[0]), float(betas[1])),
                   precision=str(t.get("precision")), seed=seed,
                   ckpt_dir=str(t.ckpt_dir) if t.get("ckpt_dir") else None,
                   init_from=str(t.init_from) if t.get("init_from") else None, resume=t.get("resume"),
                   train_only=train_only,
                   log_every=log_every, crop_metre=crop_metre, fim_rate=fim_rate, **early, **shifts)
