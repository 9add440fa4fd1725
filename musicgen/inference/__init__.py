"""Inference: loading a model from a checkpoint and picking the device, shared by train, generate and evaluate.

`load_model(path, device)` -> `LoadedModel` (model in eval mode, its tokenizer and vocabulary, the checkpoint's
metadata); the checkpoint file in one module (`checkpoint`: `save_checkpoint`, the safe reader `load_checkpoint`
that training's resume also uses, `export_inference_checkpoint`);
`resolve_device` is the one device resolver; `resolve_checkpoint` finds a checkpoint file.
"""

from .checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, Checkpoint, export_inference_checkpoint, file_sha256,
                         load_checkpoint, save_checkpoint)
from .device import resolve_device
from .loader import DEFAULT_CHECKPOINT, LoadedModel, load_model, resolve_checkpoint

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "DEFAULT_CHECKPOINT", "Checkpoint", "LoadedModel",
           "export_inference_checkpoint", "file_sha256", "load_checkpoint", "load_model", "resolve_checkpoint",
           "resolve_device", "save_checkpoint"]
