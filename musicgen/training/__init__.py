"""Training: the loop (`trainer`), checkpoint saving and export, schedule, optimizer groups, DDP plumbing.

Loading a checkpoint (for resume as for inference) is `musicgen.inference`.
"""

from .checkpoint import export_inference_checkpoint, save_checkpoint

__all__ = ["export_inference_checkpoint", "save_checkpoint"]
