"""Fine-tune a model on a folder of one's own MIDI: `python -m musicgen.finetune my_midis/ --out runs/mystyle`.

- :mod:`.cli`      the command: the Hydra preset conf/experiment/finetune.yaml + the folder's own settings (steps
  for its size, a time estimate), then the ordinary trainer (`musicgen.training.trainer.run_training`);
- :mod:`.copying`  the longest run of bars a generated piece copies from a training file (a memorisation check).

docs/finetune.md describes what it does, why, and what benchmarks/finetune.py measured.
"""

from .copying import CopyReport, CorpusBars, longest_copied_run

__all__ = ["CopyReport", "CorpusBars", "longest_copied_run"]
