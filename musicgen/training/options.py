"""`TrainOptions`: the training loop's settings (the `train` group), typed and checked once, at the edge.

conf/train/default.yaml documents every field (same names) and states these defaults (a test keeps the two
equal). Every error names its option (`train.ckpt_every must be an integer >= 1, got 0`) and is raised before
anything is built. The other groups of a run (data, tokenizer, model, logger, seed) are in `RunConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..config import UserError, check_float, check_int

RESUME_CHOICES = "false (a fresh run), true (continue <ckpt_dir>/last.pt), auto (continue it when it exists, " \
                 "else start fresh) or the path of a checkpoint"
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class TrainOptions:
    """Validated training settings (see the module docstring)."""

    seq_len: int = 512
    batch_size: int = 8
    grad_accum: int = 1
    max_steps: int = 20000
    lr: float = 5.0e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    pe_lr_scale: float | None = 10.0
    warmup_steps: int = 500
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    precision: str = "fp32"
    val_every: int = 500
    val_batches: int = 50
    val_length_factor: int | None = 4
    val_long_batches: int | None = 8
    ckpt_every: int = 500
    ckpt_dir: str | None = None
    fim_rate: float = 0.3
    init_from: str | None = None
    train_only: tuple[str, ...] | None = None
    resume: bool | str | None = False
    num_workers: int = 0
    early_stop_patience: int = 0
    early_stop_min_delta: float = 0.0
    time_limit_minutes: float | None = None
    stop_at_step: int | None = None

    def __post_init__(self) -> None:
        for name, minimum in (("seq_len", 1), ("batch_size", 1), ("grad_accum", 1), ("max_steps", 1),
                              ("warmup_steps", 0), ("val_every", 1), ("val_batches", 1), ("ckpt_every", 1),
                              ("num_workers", 0), ("early_stop_patience", 0)):
            check_int(f"train.{name}", getattr(self, name), minimum=minimum)
        for name, minimum in (("val_length_factor", 0), ("val_long_batches", 1), ("stop_at_step", 1)):
            check_int(f"train.{name}", getattr(self, name), minimum=minimum, allow_none=True)
        check_float("train.lr", self.lr, minimum=0.0, exclusive_min=True)
        check_float("train.weight_decay", self.weight_decay, minimum=0.0)
        check_float("train.pe_lr_scale", self.pe_lr_scale, minimum=0.0, allow_none=True)
        check_float("train.min_lr_ratio", self.min_lr_ratio, minimum=0.0, maximum=1.0)
        check_float("train.grad_clip", self.grad_clip, minimum=0.0)
        check_float("train.early_stop_min_delta", self.early_stop_min_delta, minimum=0.0)
        check_float("train.time_limit_minutes", self.time_limit_minutes, minimum=0.0, exclusive_min=True,
                    allow_none=True)
        check_float("train.fim_rate", self.fim_rate, minimum=0.0, maximum=1.0)
        for i, beta in enumerate(self.betas):
            if not 0.0 <= check_float(f"train.betas[{i}]", beta) < 1.0:
                raise UserError(f"train.betas[{i}] must be in [0, 1), got {beta!r}")
        if self.precision not in PRECISIONS:
            raise UserError(f"train.precision={self.precision}: use fp32, bf16 or fp16")
        if not isinstance(self.resume, (bool, str, type(None))):
            raise UserError(f"train.resume={self.resume!r}: use {RESUME_CHOICES}")
        if self.train_only is not None and (not self.train_only or not all(self.train_only)):
            raise UserError(f"train.train_only={list(self.train_only)!r}: expected null or a list of parameter-name "
                            "prefixes, e.g. [recall]")
        # a path option given as an empty string means "not set", as null does
        for name in ("ckpt_dir", "init_from"):
            if getattr(self, name) == "":
                object.__setattr__(self, name, None)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> "TrainOptions":
        """From the `train` group (a Hydra node or a dict); every error names its option."""
        from ..typed_config import typed_group

        return typed_group(cls, values, "train")
