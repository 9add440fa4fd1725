"""Train a musicgen model: `python train.py [hydra overrides]` (see README and conf/)."""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_SILENT", "true")

from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from musicgen.config import hydra_main  # noqa: E402


@hydra_main()
def main(cfg: DictConfig) -> None:
    from musicgen.training.trainer import run_training

    run_dir = HydraConfig.get().runtime.output_dir
    result = run_training(cfg, run_dir)
    if int(os.environ.get("RANK", "0")) == 0:
        best = f"{result.best_val_nll:.4f} nats/token" if result.best_val_nll is not None else "n/a"
        print(f"{'stopped' if result.interrupted else 'finished'} at step {result.step}: last train loss "
              f"{result.last_loss:.4f} nats/token, best validation NLL {best}; checkpoints in {result.ckpt_dir}")


if __name__ == "__main__":
    main()
