"""The local web studio (musicgen/studio): its HTTP API with a tiny model, and the page in headless Chromium.

The HTTP tests run the real server (uvicorn, in a thread, on a free port on 127.0.0.1) and talk to it with the
standard library, as a browser would: bad uploads and bad option values get a one-line 4xx JSON message, a
too-large upload is refused before it is read, two jobs at once both finish, and an upload is written only
inside a temporary folder. The browser test drives the page with Debian's chromium + chromium-driver through
Selenium (`make test` installs them where it can; the test skips, saying why, where they cannot be had):
upload a POP909 song, generate 4 bars with the shipped model, wait for the piano roll and the player, download
the MIDI and parse it. MUSICGEN_STUDIO_SCREENSHOT=path.png also saves a screenshot (docs/studio.png).
"""

from __future__ import annotations

import http.client
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator

import miditoolkit
import pytest

pytest.importorskip("starlette", reason="the studio extra is not installed: pip install -e '.[studio]'")
pytest.importorskip("uvicorn", reason="the studio extra is not installed: pip install -e '.[studio]'")
pytest.importorskip("multipart", reason="the studio extra is not installed: pip install -e '.[studio]'")

from musicgen.generation.api import generate_with  # noqa: E402
from musicgen.generation.options import GenerateOptions  # noqa: E402
from musicgen.studio import StudioConfig  # noqa: E402
from studio_support import CHROMEDRIVER, chromium_or_skip, fetch_bytes, running, tiny_config  # noqa: E402


REPO = Path(__file__).absolute().parents[1]
SHIPPED = REPO / "checkpoints" / "musicgen-small.pt"


@pytest.fixture(scope="module")
def pop909_song(pop909_dir: Path) -> Path:
    return pop909_dir / "020.mid"


def multipart(fields: dict[str, str], file: tuple[str, bytes] | None = None) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    if file is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"; filename="{file[0]}"\r\n'
                     f"Content-Type: audio/midi\r\n\r\n".encode() + file[1] + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def request(url: str, body: bytes | None = None, content_type: str | None = None,
            timeout: float = 60) -> tuple[int, Any]:
    """(status, parsed JSON) of one request; 4xx/5xx answers are returned, not raised."""
    headers = {"Content-Type": content_type} if content_type else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=timeout) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def submit(base: str, fields: dict[str, str], file: tuple[str, bytes] | None = None) -> tuple[int, Any]:
    return request(base + "api/jobs", *multipart(fields, file))


def wait_done(base: str, job_id: str, timeout: float = 600) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status, job = request(f"{base}api/jobs/{job_id}")
        assert status == 200, job
        if job["status"] in ("done", "error"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not finished after {timeout} s")


# --- the progress hook of the public API ---------------------------------------------------------------------
def test_generate_with_reports_progress(tiny_checkpoint: Path) -> None:
    calls: list[tuple[int, int]] = []
    options = GenerateOptions(checkpoint=str(tiny_checkpoint), device="cpu", bars=None, tokens=150,
                              allow_eos=False, seed=1, progress=False, pianoroll=False)
    generate_with(options, log=None, on_progress=lambda done, limit: calls.append((done, limit)))
    assert calls == [(64, 150), (128, 150), (150, 150)]


# --- audio ------------------------------------------------------------------------------------------------
def _wav(path: Path) -> tuple[float, float, float]:
    """(peak, rms, seconds) of a 16-bit WAV."""
    import wave

    import numpy as np

    with wave.open(str(path)) as handle:
        pcm = np.frombuffer(handle.readframes(handle.getnframes()), np.int16).astype(float) / 32768
        return float(np.abs(pcm).max()), float(np.sqrt((pcm ** 2).mean())), handle.getnframes() / handle.getframerate()


def _two_notes(path: Path) -> Path:
    midi = miditoolkit.MidiFile()
    piano = miditoolkit.Instrument(program=0)
    piano.notes = [miditoolkit.Note(velocity=90, pitch=60, start=0, end=480),
                   miditoolkit.Note(velocity=60, pitch=67, start=480, end=1920)]
    midi.instruments = [piano]
    midi.dump(str(path))
    return path


def test_builtin_synthesis_writes_audible_audio(tmp_path: Path) -> None:
    from musicgen.studio import audio

    how = audio.render(_two_notes(tmp_path / "a.mid"), tmp_path / "a.wav", audio.Synth(None, None))
    assert how.startswith("built-in synthesis")
    peak, rms, seconds = _wav(tmp_path / "a.wav")
    assert 0.5 < peak < 1.0 and rms > 0.02 and 2.0 <= seconds <= 5.0  # 2 s of notes, then the release


def test_fluidsynth_rendering_where_installed(tmp_path: Path) -> None:
    from musicgen.studio import audio

    synth = audio.find_synth()
    if not synth.uses_fluidsynth:
        pytest.skip(f"no fluidsynth + General MIDI soundfont here ({synth.describe()})")
    how = audio.render(_two_notes(tmp_path / "a.mid"), tmp_path / "a.wav", synth)
    assert how.startswith("fluidsynth with") and _wav(tmp_path / "a.wav")[0] > 0.5  # normalised


# --- HTTP: the page, bad input ---------------------------------------------------------------------------
def test_page_and_assets_are_served_by_the_app_no_cdn(tiny_checkpoint: Path) -> None:
    with running(tiny_config(tiny_checkpoint)) as base:
        html = fetch_bytes(base).decode()
        assert "<form" in html and 'id="generate"' in html
        for asset in ("static/studio.js", "static/studio.css", "static/favicon.svg"):
            assert asset in html
            text = fetch_bytes(base + asset).decode().replace('xmlns="http://www.w3.org/2000/svg"', "")  # a name
            assert "http://" not in text and "https://" not in text, f"{asset} refers to the network"
        assert "https://" not in html and "http://" not in html
        status, info = request(base + "api/info")
        assert status == 200 and info["checkpoint"] == "tiny.pt" and info["synthesis"]
        # the page's initial values come from the options' one source, and the page does not repeat them
        from musicgen.generation.sampling import SamplingConfig

        assert info["defaults"]["top_p"] == SamplingConfig.top_p
        assert info["defaults"]["tonal_memory"] == SamplingConfig.tonal_memory
        for name in info["defaults"]:
            tag = html[html.index(f'id="{name}"') - 80: html.index(f'id="{name}"') + 200].split(">")[0]
            assert "<input" not in tag or " value=" not in tag, f"the page hard-codes {name}"
        status, answer = request(base + "static/../app.py")
        assert status == 404 and answer["error"]


def test_bad_uploads_get_a_message(tiny_checkpoint: Path, tmp_path: Path) -> None:
    empty_midi = miditoolkit.MidiFile()
    empty_midi.dump(str(tmp_path / "empty.mid"))
    cases = {
        "not MIDI": (("song.mid", b"%PDF-1.4 not a midi file"), "is not a MIDI file"),
        "corrupt": (("song.mid", b"MThd\x00\x00\x00\x06\x00\x01\x00\x02\x01\xe0MTrk\xff\xff"), "cannot be read"),
        "empty": (("song.mid", b""), "is empty"),
        "no notes": (("empty.mid", (tmp_path / "empty.mid").read_bytes()), "holds no notes"),
    }
    with running(tiny_config(tiny_checkpoint)) as base:
        for case, (file, words) in cases.items():
            status, answer = submit(base, {"bars": "2"}, file)
            assert status == 400, (case, answer)
            assert words in answer["error"] and "\n" not in answer["error"], (case, answer)
        status, info = request(base + "api/info")  # the server is still up
        assert status == 200


def test_oversize_upload_refused_before_it_is_read(tiny_checkpoint: Path) -> None:
    big = b"MThd" + bytes(300 * 1024)
    with running(tiny_config(tiny_checkpoint, max_upload_bytes=100 * 1024)) as base:
        status, answer = submit(base, {"bars": "2"}, ("big.mid", big))
        assert status == 413 and "up to 100 KiB" in answer["error"], answer
        # The same without a Content-Length (chunked): refused while streaming, never buffered whole.
        body, content_type = multipart({"bars": "2"}, ("big.mid", big))
        port = int(base.rsplit(":", 1)[1].strip("/"))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request("POST", "/api/jobs", body=(body[i:i + 8192] for i in range(0, len(body), 8192)),
                         headers={"Content-Type": content_type}, encode_chunked=True)
            response = conn.getresponse()
            assert response.status == 413 and "accepts MIDI files up to" in json.load(response)["error"]
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may close the connection before the client has sent everything: also a refusal
        finally:
            conn.close()


def test_bad_option_values_give_the_library_message(tiny_checkpoint: Path) -> None:
    with running(tiny_config(tiny_checkpoint)) as base:
        status, answer = submit(base, {"bars": "2", "chords": "Am Hx | C"})
        assert status == 400 and "unknown chord symbol 'Hx'" in answer["error"], answer
        status, answer = submit(base, {"bars": "2", "seed": "abc"})
        assert status == 400 and "seed" in answer["error"], answer
        status, answer = submit(base, {"bars": "100000"})
        assert status == 400 and "at most 512 bars" in answer["error"], answer
        status, answer = submit(base, {"bars": "2", "tonal_memory": "-1"})
        assert status == 400 and "tonal_memory" in answer["error"], answer
        status, answer = submit(base, {"bars": "2", "colour": "blue"})
        assert status == 400 and "colour" in answer["error"], answer
        status, answer = request(base + "api/jobs/nope")
        assert status == 404 and answer["error"]


def test_prompt_the_tokenizer_refuses_ends_the_job_with_a_message(tiny_checkpoint: Path, pop909_song: Path) -> None:
    with running(tiny_config(tiny_checkpoint)) as base:
        status, answer = submit(base, {"bars": "2", "prompt_time_signature": "7/1"},
                                ("song.mid", pop909_song.read_bytes()))
        if status == 202:  # refused while the job starts (the checkpoint's grid), or at once: either has a message
            job = wait_done(base, answer["id"])
            assert job["status"] == "error" and "7/1" in job["error"], job
        else:
            assert status == 400 and "7/1" in answer["error"], answer


# --- HTTP: jobs ------------------------------------------------------------------------------------------
def test_two_concurrent_jobs_both_complete(tiny_checkpoint: Path, pop909_song: Path) -> None:
    """Two tabs press Generate at once with the same settings: both finish, in parallel workers, with the same
    music (each job has its own model and RNGs: nothing shared between threads changes the result)."""
    with running(tiny_config(tiny_checkpoint, workers=2)) as base:
        answers: list[tuple[int, Any]] = []

        def press() -> None:
            answers.append(submit(base, {"bars": "3", "seed": "5", "num_samples": "2", "prompt_bars": "2",
                                         "prompt_time_signature": "4/4"}, ("020.mid", pop909_song.read_bytes())))

        tabs = [threading.Thread(target=press) for _ in range(2)]
        for tab in tabs:
            tab.start()
        for tab in tabs:
            tab.join(60)
        assert [status for status, _ in answers] == [202, 202], answers
        jobs = [wait_done(base, answer["id"]) for _, answer in answers]
        midis = []
        for job in jobs:
            assert job["status"] == "done", job["error"]
            assert len(job["pieces"]) == 2 and job["tokens"] > 0 and job["seed"] == 5
            for piece in job["pieces"]:
                data = fetch_bytes(base + piece["urls"]["mid"])
                midi = miditoolkit.MidiFile(file=io.BytesIO(data))
                assert sum(len(i.notes) for i in midi.instruments) == piece["notes"] > 0
                assert fetch_bytes(base + piece["urls"]["wav"])[:4] == b"RIFF"
                assert json.loads(fetch_bytes(base + piece["urls"]["json"]))["seed"] == 5
                assert piece["roll"]["notes"] and piece["roll"]["prompt_end"] > 0
                midis.append(data)
        assert midis[:2] == midis[2:] and jobs[0]["id"] != jobs[1]["id"]


def test_progress_is_reported_while_a_piece_is_written(tiny_checkpoint: Path) -> None:
    with running(tiny_config(tiny_checkpoint)) as base:
        status, answer = submit(base, {"bars": "24", "seed": "1", "allow_eos": "false"})
        assert status == 202, answer
        seen: list[tuple[str, int]] = []
        deadline = time.time() + 600
        while time.time() < deadline:
            job = request(f"{base}api/jobs/{answer['id']}")[1]
            seen.append((job["status"], job["tokens"]))
            if job["status"] in ("done", "error"):
                break
            time.sleep(0.02)
        assert job["status"] == "done", job["error"]
        written = [tokens for status, tokens in seen if status == "running"]
        assert any(0 < tokens < job["tokens"] for tokens in written), (sorted(set(seen)), job["tokens"])  # mid-way
        assert written == sorted(written) and job["limit"] >= 160 * 24 and job["expected"] > 0
        assert job["pieces"][0]["stop_reason"] == "bars" and job["pieces"][0]["bars"] == 24


def test_upload_is_written_only_inside_a_temporary_folder(tiny_checkpoint: Path, pop909_song: Path,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    temp_root, cwd = tmp_path / "tmp", tmp_path / "cwd"
    temp_root.mkdir()
    cwd.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp_root))
    monkeypatch.chdir(cwd)
    data = pop909_song.read_bytes()
    with running(tiny_config(tiny_checkpoint)) as base:
        status, answer = submit(base, {"bars": "2", "prompt_bars": "2"}, ("../../escape.mid", data))
        assert status == 202, answer
        job = wait_done(base, answer["id"])
        assert job["status"] == "done", job["error"]
        copies = [p for p in tmp_path.rglob("*") if p.is_file() and p.read_bytes() == data]
        assert copies, "the prompt should be in the job's temporary folder while the job is kept"
        for copy in copies:
            folder = copy.relative_to(temp_root).parts[0]
            assert folder.startswith("musicgen-studio-") and copy.name == "prompt.mid", copy
        assert not any(cwd.iterdir()) and not (tmp_path / "escape.mid").exists()
    assert not list(temp_root.glob("musicgen-studio-*")), "stopping the server removes every job folder"


def test_command_line_prints_its_url_and_serves(tiny_checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    from musicgen.studio.__main__ import main

    assert main(["--checkpoint", "no/such.pt"]) == 2  # in-process: one line, before anything listens
    assert capsys.readouterr().err.startswith("error: checkpoint")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "musicgen.studio", "--port", "0", "--checkpoint",
                             str(tiny_checkpoint)], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("musicgen studio: http://127.0.0.1:"), line
        url = line.split()[2]
        deadline = time.time() + 300
        while True:
            try:
                assert b"musicgen studio" in fetch_bytes(url)
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.time() < deadline and proc.poll() is None, "the studio did not start serving"
                time.sleep(0.2)
        port = url.split("?")[0].rstrip("/").rsplit(":", 1)[1]  # the URL carries the run's token (guard.py)
        assert main(["--port", port, "--checkpoint", str(tiny_checkpoint)]) == 2  # that port is taken now
        captured = capsys.readouterr()
        assert "cannot listen on 127.0.0.1:" in captured.err and "musicgen studio:" not in captured.out
    finally:
        proc.terminate()
        proc.wait(60)


# --- the page in a real browser --------------------------------------------------------------------------


@pytest.fixture
def browser() -> Iterator[Any]:
    webdriver, binary = chromium_or_skip()
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,1500", "--mute-audio", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    # An explicit chromedriver: Selenium Manager never looks for (or downloads) a driver.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


def test_browser_upload_generate_play_download(browser: Any, pop909_song: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    assert SHIPPED.is_file(), "the shipped model checkpoints/musicgen-small.pt is part of the repository"
    not_midi = tmp_path / "notes.mid"
    not_midi.write_text("these are my notes, not MIDI")
    with running(StudioConfig(checkpoint=str(SHIPPED), device="cpu")) as base:
        browser.get(base)
        wait = WebDriverWait(browser, 120)
        wait.until(lambda d: d.find_element(By.ID, "synth").text not in ("", "…"))
        assert "synthesis" in browser.find_element(By.ID, "synth").text or \
            "fluidsynth" in browser.find_element(By.ID, "synth").text

        # A bad upload: the page shows the server's message, and nothing breaks.
        browser.find_element(By.ID, "prompt").send_keys(str(not_midi))
        browser.find_element(By.ID, "generate").click()
        wait.until(ec.visibility_of_element_located((By.ID, "error")))
        assert "is not a MIDI file" in browser.find_element(By.ID, "error").text

        # A POP909 song as the prompt, 4 bars of continuation over a chord chart.
        browser.execute_script("document.getElementById('prompt').value = ''")
        browser.find_element(By.ID, "prompt").send_keys(str(pop909_song))
        for field, value in (("prompt_bars", "4"), ("bars", "4"), ("num_samples", "2"), ("seed", "7"),
                             ("chords", "C G | Am F")):
            element = browser.find_element(By.ID, field)
            element.clear()
            element.send_keys(value)
        Select(browser.find_element(By.ID, "prompt_time_signature")).select_by_visible_text("4/4")
        browser.find_element(By.ID, "generate").click()
        WebDriverWait(browser, 900).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#piece-1 canvas.roll[data-notes]")
            or d.find_element(By.ID, "error").is_displayed())
        assert not browser.find_element(By.ID, "error").is_displayed(), browser.find_element(By.ID, "error").text
        assert "done: 2 variation(s)" in browser.find_element(By.ID, "status-text").text
        pieces = browser.find_elements(By.CSS_SELECTOR, "article.piece")
        assert len(pieces) == 2
        for piece in pieces:
            assert int(piece.find_element(By.CSS_SELECTOR, "canvas.roll").get_attribute("data-notes")) > 0
        # The players: each <audio> loads its WAV (rendered by the server).
        WebDriverWait(browser, 180).until(lambda d: all(
            a.get_attribute("data-loaded") for a in d.find_elements(By.CSS_SELECTOR, "article.piece audio")))
        for player in browser.find_elements(By.CSS_SELECTOR, "article.piece audio"):
            assert player.get_attribute("data-loaded") == "1"
            assert browser.execute_script("return arguments[0].duration", player) > 1.0
        # Download the MIDI of the first variation (its link's URL) and parse it.
        href = pieces[0].find_element(By.CSS_SELECTOR, "a.download-mid").get_attribute("href")
        midi = miditoolkit.MidiFile(file=io.BytesIO(fetch_bytes(href)))
        assert sum(len(inst.notes) for inst in midi.instruments) > 0
        assert fetch_bytes(pieces[0].find_element(By.CSS_SELECTOR, "a.download-wav").get_attribute("href"))[:4] \
            == b"RIFF"
        shot = os.environ.get("MUSICGEN_STUDIO_SCREENSHOT")
        if shot:
            browser.execute_script("window.scrollTo(0, 0)")
            height = browser.execute_script("return document.body.scrollHeight")
            browser.set_window_size(1200, min(int(height) + 200, 2400))
            time.sleep(0.5)
            browser.save_screenshot(shot)
