"""The one device resolver of train, generate and evaluate (and the benchmarks)."""

from __future__ import annotations

from typing import Any

from ..config import UserError


def resolve_device(option: Any, local_rank: int | None = None, name: str = "device"):
    """`auto`/None = cuda when available, else cpu; returns a `torch.device`.

    A device this machine does not have (device=cuda without a GPU or a CUDA build, cuda:3 on a 2-GPU
    machine, mps off macOS) is a one-line UserError here, before anything is loaded, instead of an
    AssertionError from deep inside torch. `local_rank` picks the GPU of a torchrun process. Generate and
    evaluate record `str(device)` in their files.
    """
    import torch

    text = "auto" if option is None or str(option).strip() == "" else str(option).strip()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank) if local_rank is not None else torch.device("cuda")
        return torch.device("cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"{name}={text}: not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{name}={text}: CUDA is not available on this machine (use {name}=cpu or {name}=auto)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UserError(f"{name}={text}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
        if device.index is None and local_rank is not None:
            device = torch.device("cuda", local_rank)
        return device
    if device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UserError(f"{name}={text}: MPS is not available on this machine (use {name}=cpu or {name}=auto)")
        return device
    raise UserError(f"{name}={text}: unsupported device type {device.type!r} (use auto, cpu, cuda, cuda:N or mps)")
