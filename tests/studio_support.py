"""Helpers the studio's test modules share (not fixtures): serving the studio, a browser or a skip, the tiny
studio config, and the TestClient helpers of its job routes. One place, so no test module imports another."""

from __future__ import annotations

import contextlib
import io
import shutil
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import miditoolkit
import pytest

from musicgen.studio import StudioConfig, create_app
from support import serve_studio

if TYPE_CHECKING:
    from starlette.testclient import TestClient

CHROMEDRIVER = "/usr/bin/chromedriver"
BASE = "http://127.0.0.1:8000"
TOKEN = "s3cret-token"


@contextlib.contextmanager
def running(config: StudioConfig) -> Iterator[str]:
    """The studio served by uvicorn in a thread on a free local port; yields its base URL."""
    server, thread, port = serve_studio(create_app(config))
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(60)


def fetch_bytes(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as response:
        return response.read()


def tiny_config(checkpoint: Path, **kwargs: Any) -> StudioConfig:
    return StudioConfig(checkpoint=str(checkpoint), device="cpu", **kwargs)


def chromium_or_skip() -> tuple[Any, str]:
    """(selenium webdriver module, chromium binary), or skip saying what is missing."""
    try:
        from selenium import webdriver
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if not binary or not Path(CHROMEDRIVER).is_file():
        pytest.skip("headless Chromium is not available: `apt-get install chromium chromium-driver` (Debian; "
                    "`make test` does this when run as root) provides /usr/bin/chromium and /usr/bin/chromedriver")
    return webdriver, binary


def wait(client: TestClient, job_id: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        answer = client.get(f"/api/jobs/{job_id}")
        assert answer.status_code == 200, answer.text
        job = answer.json()
        if job["status"] in ("done", "error"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not finished after {timeout} s")


def run_job(client: TestClient, url: str, fields: dict[str, str], **kwargs: Any) -> dict[str, Any]:
    answer = client.post(url, data=fields, **kwargs)
    assert answer.status_code == 202, answer.text
    job = wait(client, answer.json()["id"])
    assert job["status"] == "done", job["error"]
    return job


def infill_url(job: dict[str, Any], index: int) -> str:
    return f"/api/jobs/{job['id']}/pieces/{index}/infill"


def made_up_prompt(bars: int = 5) -> bytes:
    """A 4/4 piano prompt of quarter notes, none sounding across a bar line."""
    midi = miditoolkit.MidiFile(ticks_per_beat=480)
    piano = miditoolkit.Instrument(program=0, name="piano")
    for bar in range(bars):
        for beat in range(4):
            tick = bar * 1920 + beat * 480
            piano.notes.append(miditoolkit.Note(80, 60 + (2 * bar + 3 * beat) % 12, tick, tick + 480))
    midi.instruments.append(piano)
    midi.tempo_changes.append(miditoolkit.TempoChange(100.0, 0))
    midi.time_signature_changes.append(miditoolkit.TimeSignature(4, 4, 0))
    buffer = io.BytesIO()
    midi.dump(file=buffer)
    return buffer.getvalue()


def jobs_held(client: TestClient) -> int:
    return len(client.app.state.manager._jobs)
