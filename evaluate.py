"""Evaluate a checkpoint: `python evaluate.py [option=value ...]` (options: conf/evaluate.yaml).

    python evaluate.py                                            # shipped model, test split, NLL by position
    python evaluate.py checkpoint=outputs/.../best.pt max_files=20 length_factor=4
    python evaluate.py generated=outputs/generate/2024-01-01/12-00-00      # + music statistics vs the split
    python evaluate.py drift_tokens=10000 drift_samples=4                  # + long-generation drift

The last printed line is machine-readable: `nll_by_position: [0,512): 1.234  [512,1024): 1.300  ...`.
"""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_SILENT", "true")

from musicgen.config import hydra_main  # noqa: E402


@hydra_main(config_name="evaluate")
def main(cfg) -> None:
    from omegaconf import OmegaConf

    from musicgen.evaluation.report import EvaluateOptions, evaluate

    options = EvaluateOptions.from_mapping(OmegaConf.to_container(cfg, resolve=True))
    result = evaluate(options, log=lambda msg: print(msg, flush=True))
    print(result.last_line, flush=True)


if __name__ == "__main__":
    main()
