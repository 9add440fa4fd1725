"""Shared fixtures. Real MIDI comes from MUSICGEN_SHARED_DATA (default: ../shared/data beside the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
# Test models are tiny: intra-op threads gain nothing and spinning threads crawl on a busy 2-core machine.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MUSICGEN_SHARED_DATA", REPO.parent / "shared" / "data"))


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not found: set MUSICGEN_SHARED_DATA to the folder holding pop909/ and midi-oddities/")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _require(SHARED_DATA)


@pytest.fixture(scope="session")
def pop909_dir() -> Path:
    return _require(SHARED_DATA / "pop909")


@pytest.fixture(scope="session")
def oddities_dir() -> Path:
    return _require(SHARED_DATA / "midi-oddities")
