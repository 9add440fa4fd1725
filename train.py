"""Train a musicgen model: `python train.py [hydra overrides]` (see README and conf/).

Exit codes: 0 when the run reached train.max_steps or stopped at train.stop_at_step (a deliberate time-box;
it saved last.pt and says how to resume); 1 for a one-line `error: ...` (bad option, data, checkpoint or
folder); 128 + the signal number (130 for SIGINT/Ctrl-C, 143 for SIGTERM) when a signal stopped the run
before max_steps: it saved last.pt first, but a scheduler must not read the run as finished.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("WANDB_SILENT", "true")

from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from musicgen.config import hydra_main  # noqa: E402


@hydra_main()
def main(cfg: DictConfig) -> None:
    from musicgen.training.trainer import run_training

    run_dir = HydraConfig.get().runtime.output_dir
    result = run_training(cfg, run_dir)
    if int(os.environ.get("RANK", "0")) != 0:
        if result.signal_number is not None:
            sys.exit(128 + result.signal_number)
        return
    best = f"{result.best_val_nll:.4f} nats/token" if result.best_val_nll is not None else "n/a"
    summary = (f"last train loss {result.last_loss:.4f} nats/token, best validation NLL {best}; "
               f"checkpoints in {result.ckpt_dir}")
    if result.signal_number is not None:
        print(f"stopped by {result.stop_reason} before train.max_steps={cfg.train.max_steps}: saved at step "
              f"{result.step}, resume with train.resume=true train.ckpt_dir={result.ckpt_dir}", file=sys.stderr)
        print(f"stopped at step {result.step}: {summary}")
        sys.exit(128 + result.signal_number)
    if result.stop_reason == "stop_at_step":
        print(f"stopped at step {result.step} (train.stop_at_step; max_steps={cfg.train.max_steps}): {summary}; "
              f"resume with train.resume=true train.ckpt_dir={result.ckpt_dir}")
        return
    print(f"finished at step {result.step}: {summary}")


if __name__ == "__main__":
    main()
