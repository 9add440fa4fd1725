"""Training: checkpoints, schedule, distributed plumbing and the loop (import `trainer` for the loop)."""

from .checkpoint import Checkpoint, export_inference_checkpoint, file_sha256, load_checkpoint, load_model, save_checkpoint

__all__ = ["Checkpoint", "export_inference_checkpoint", "file_sha256", "load_checkpoint", "load_model",
           "save_checkpoint"]
