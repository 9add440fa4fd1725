"""Launched by tests/test_train.py under torchrun: trains a few steps, then saves this rank's parameters."""

import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from musicgen.config import CONF_DIR
from musicgen.training.trainer import run_training

if __name__ == "__main__":
    out = Path(sys.argv[1])
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=sys.argv[2:])
    captured = {}
    import musicgen.training.trainer as trainer

    original = trainer.build_model

    def build_and_capture(*args, **kwargs):
        model = original(*args, **kwargs)
        captured["model"] = model
        return model

    trainer.build_model = build_and_capture
    run_training(cfg, out / "run", progress=False)
    rank = int(__import__("os").environ["RANK"])
    torch.save(captured["model"].state_dict(), out / f"rank{rank}.pt")
