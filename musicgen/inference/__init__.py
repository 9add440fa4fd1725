"""Inference: loading a model from a checkpoint and picking the device, shared by train, generate and evaluate.

`load_model(path, device)` -> `LoadedModel` (model in eval mode, its tokenizer and vocabulary, the checkpoint's
metadata); `load_checkpoint` is the safe reader underneath (also used by training to resume);
`resolve_device` is the one device resolver; `resolve_checkpoint` finds a checkpoint file.
"""

from .device import resolve_device
from .loader import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, DEFAULT_CHECKPOINT, Checkpoint, LoadedModel,
                     file_sha256, load_checkpoint, load_model, resolve_checkpoint)

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "DEFAULT_CHECKPOINT", "Checkpoint", "LoadedModel",
           "file_sha256", "load_checkpoint", "load_model", "resolve_checkpoint", "resolve_device"]
