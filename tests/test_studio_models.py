"""The studio's model list (musicgen/studio/models.py): the page picks a fine-tuned model by name, never by path;
runs/*/best.pt are found; a damaged one is left out; an unknown name is a one-line 400 that starts nothing."""

from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the studio extra is not installed: pip install -e '.[studio]'")
pytest.importorskip("multipart", reason="the studio extra is not installed: pip install -e '.[studio]'")
pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx")

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx`")
    from starlette.testclient import TestClient  # noqa: E402

from musicgen.config import UserError  # noqa: E402
from musicgen.studio import StudioConfig, create_app  # noqa: E402
from musicgen.studio.models import find_models, pick_model  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
BASE = "http://127.0.0.1:8000"
PAGE = {"Origin": BASE, "Sec-Fetch-Site": "same-origin"}


def test_the_page_picks_a_fine_tuned_model_by_name(note_checkpoint: Path, tmp_path: Path) -> None:
    mine = tmp_path / "runs" / "mystyle" / "best.pt"
    mine.parent.mkdir(parents=True)
    shutil.copy(note_checkpoint, mine)
    broken = tmp_path / "runs" / "broken" / "best.pt"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a checkpoint")
    models = find_models(str(note_checkpoint), (), tmp_path)
    assert [name for name, _ in models] == [note_checkpoint.name, "mystyle/best.pt"]  # the broken one left out
    assert pick_model(models, "") == str(note_checkpoint) and pick_model(models, "mystyle/best.pt") == str(mine)
    with pytest.raises(UserError, match="not one of this studio's models") as info:
        pick_model(models, str(note_checkpoint))  # a path is not a name
    assert "\n" not in str(info.value)

    app = create_app(StudioConfig(checkpoint=str(note_checkpoint), device="cpu", workers=1, models=models))
    with TestClient(app, base_url=BASE, headers=PAGE) as client:
        assert client.get("/api/info").json()["models"] == [note_checkpoint.name, "mystyle/best.pt"]
        refused = client.post("/api/jobs", data={"model": "../../etc/passwd", "bars": "2"})
        assert refused.status_code == 400 and "not one of this studio's models" in refused.json()["error"]
        answer = client.post("/api/jobs", data={"model": "mystyle/best.pt", "bars": "2", "seed": "1"})
        assert answer.status_code == 202, answer.text
        deadline = time.time() + 120
        while (job := client.get(f"/api/jobs/{answer.json()['id']}").json())["status"] not in ("done", "error"):
            assert time.time() < deadline
            time.sleep(0.05)
        assert job["status"] == "done", job["error"]
        assert job["model"] == "mystyle/best.pt"


def test_a_model_given_on_the_command_line_must_load(note_checkpoint: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(UserError, match="--model") as info:
        find_models(str(note_checkpoint), (str(bad),), None)
    assert "\n" not in str(info.value)
