"""The studio's "Regenerate these bars" (musicgen/studio/edit.py, POST api/jobs/<id>/pieces/<n>/infill).

Through Starlette's TestClient with the tiny checkpoint that leans towards notes (conftest.note_checkpoint):
a generated piece is edited, the edit is edited again, and every kept bar stays note for note
(`kept_identical` on the MIDI files the studio serves); the bars the page numbers are the ones `infill`
counts; bad ranges and settings are one-line JSON 4xx answers that start no job; the route obeys only the
studio's own page (guard.py). A browser test drags across bars of a roll in headless Chromium (skipped where
Chromium or Selenium is missing, as the studio's other browser test)."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any, Iterator

import miditoolkit
import pytest

pytest.importorskip("starlette", reason="the studio extra is not installed: pip install -e '.[studio]'")
pytest.importorskip("multipart", reason="the studio extra is not installed: pip install -e '.[studio]'")
pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx")

with warnings.catch_warnings():  # Starlette 1.x: "Using `httpx` with TestClient is deprecated" (it still works)
    warnings.filterwarnings("ignore", message="Using `httpx`")
    from starlette.testclient import TestClient  # noqa: E402

from musicgen.config import UserError  # noqa: E402
from musicgen.evaluation.infill import kept_identical  # noqa: E402
from musicgen.generation.infill import load_piece  # noqa: E402
from musicgen.generation.options import GenerateOptions  # noqa: E402
from musicgen.studio import StudioConfig, create_app  # noqa: E402
from studio_support import BASE, TOKEN, infill_url, jobs_held, made_up_prompt, run_job, wait  # noqa: E402
from musicgen.tokenizer import REMITokenizer  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
GENERATE = {"bars": "6", "seed": "3", "num_samples": "2", "allow_eos": "false"}


def midi_at(client: TestClient, url: str) -> miditoolkit.MidiFile:
    answer = client.get("/" + url)
    assert answer.status_code == 200
    return miditoolkit.MidiFile(file=io.BytesIO(answer.content))


def ticks_per_step(midi: miditoolkit.MidiFile) -> float:
    return midi.ticks_per_beat / REMITokenizer().config.steps_per_quarter


@pytest.fixture(scope="module")
def studio(note_checkpoint: Path) -> Iterator[tuple[TestClient, dict[str, Any]]]:
    """A studio on the tiny model and a finished job: an uploaded 5-bar prompt continued by 2 bars, twice.

    Edits in the tests below rewrite bars of the prompt part: the library keeps every other note in memory,
    but a filled note that starts while a kept note of the same pitch still sounds (a model-written note held
    across the bar line into the range) shortens that kept note once the file is written (MIDI pairs the
    note-offs the other way round), so ranges after model-written bars would make `kept_identical` depend on
    the seed (reported; musicgen/generation/infill.py splice)."""
    app = create_app(StudioConfig(checkpoint=str(note_checkpoint), device="cpu", workers=1))
    with TestClient(app, base_url=BASE) as client:
        job = run_job(client, "/api/jobs", {**GENERATE, "bars": "2", "prompt_bars": "5"},
                      files={"prompt": ("mine.mid", made_up_prompt(), "audio/midi")})
        yield client, job


# --- editing ---------------------------------------------------------------------------------------------
def test_edit_keeps_every_other_bar_and_can_be_edited_again(studio, tmp_path: Path) -> None:
    client, job = studio
    piece = job["pieces"][1]
    original = midi_at(client, piece["urls"]["mid"])
    original_bytes = client.get("/" + piece["urls"]["mid"]).content
    # the bars the page numbers and selects are those infill counts: the tokenizer's bars of that very file
    (tmp_path / "v1.mid").write_bytes(original_bytes)
    _, bars = load_piece(tmp_path / "v1.mid", REMITokenizer(), "file")
    measures = piece["roll"]["measures"]
    assert piece["measures"] == len(measures) == len(bars.bars) >= 6 and piece["bars_error"] is None
    assert piece["edit"] == 0 and piece["base"] == piece["name"] and not piece["infilled"]

    edited_job = run_job(client, infill_url(job, 1), {"infill": "2-3", "seed": "5", "infill_candidates": "2",
                                                      "temperature": "0.95", "key": "C"})
    assert len(edited_job["pieces"]) == 1 and edited_job["infill"] == "2-3" and edited_job["seed"] == 5
    assert edited_job["source"] == {"job": job["id"], "piece": 1, "name": piece["name"], "base": piece["name"],
                                    "edit": 1}
    edited = edited_job["pieces"][0]
    assert edited["name"] == f"{piece['name']}_edit1_00" and edited["edit"] == 1 and edited["base"] == piece["name"]
    assert edited["infilled_bars"] == "2-3" and edited["candidates"] == [2] and edited["stop_reason"] == "infill"
    per_step = ticks_per_step(original)
    spans = [tuple(span) for span in edited["infilled"]]
    assert spans == [(round(bars.starts[1] * per_step), round((bars.starts[2] + bars.lengths[2]) * per_step))]
    second = midi_at(client, edited["urls"]["mid"])
    assert kept_identical(original, second, spans, per_step)
    # the regenerated bars are shaded on the roll; the piece keeps its bars (numbering unchanged)
    assert edited["roll"]["regenerated"] == [[measures[1][0], measures[2][1]]]
    assert edited["roll"]["measures"] == measures and edited["roll"]["prompt_end"] == 0.0
    settings = client.get("/" + edited["urls"]["json"]).json()
    assert settings["seed"] == 5 and [g["bars"] for g in settings["infill"]] == ["2-3"]
    assert client.get("/" + edited["urls"]["wav"]).content[:4] == b"RIFF"

    # edit the edit: bar 5; every bar but 2-3 and 5 still the original's
    again_job = run_job(client, infill_url(edited_job, 0), {"infill": "5-5", "infill_candidates": "1"})
    again = again_job["pieces"][0]
    assert again["name"] == f"{piece['name']}_edit2_00" and again["edit"] == 2 and again["infilled_bars"] == "5"
    assert again_job["source"]["job"] == edited_job["id"] and again_job["seed"] is not None
    third = midi_at(client, again["urls"]["mid"])
    spans2 = [tuple(span) for span in again["infilled"]]
    assert kept_identical(second, third, spans2, per_step)
    assert kept_identical(original, third, spans + spans2, per_step)

    # the versions before stay downloadable (the page's Undo and "previous version" link)
    assert client.get("/" + piece["urls"]["mid"]).content == original_bytes
    assert client.get("/" + edited["urls"]["mid"]).status_code == 200
    # a fixed seed gives the same edit again
    repeat = run_job(client, infill_url(job, 1), {"infill": "2-3", "seed": "5", "infill_candidates": "2",
                                                  "temperature": "0.95", "key": "C"})
    assert client.get("/" + repeat["pieces"][0]["urls"]["mid"]).content == \
        client.get("/" + edited["urls"]["mid"]).content


def test_bad_ranges_and_settings_are_one_line_4xx(studio) -> None:
    client, job = studio
    bars = job["pieces"][0]["measures"]
    held = jobs_held(client)
    cases = [
        ({"infill": "12-9"}, "runs backwards"), ({"infill": f"{bars - 1}-{bars + 2}"}, f"has {bars} bars"),
        ({"infill": str(bars + 1)}, "lie beyond its end"), ({"infill": "0-2"}, "numbered from 1"),
        ({"infill": "abc"}, "use bar ranges"), ({"infill": ""}, "choose the bars"), ({"infill_candidates": "2"}, "choose the bars"),
        ({"infill": "1-2,2-3"}, "overlap or touch"), ({"infill": "2", "bpm": "90"}, "bpm cannot be set"),
        ({"infill": "2", "time_signature": "3/4"}, "time_signature cannot be set"),
        ({"infill": "2", "infill_candidates": "0"}, "infill_candidates"),
        ({"infill": "2", "infill_candidates": "99"}, "at most 8 per range"),
        ({"infill": "2", "temperature": "hot"}, "temperature"), ({"infill": "2", "seed": "abc"}, "seed"),
        ({"infill": "2", "chords": "Hx"}, "unknown chord symbol 'Hx'"),
        ({"infill": "2", "bars": "8"}, "unknown form field(s): bars"),
    ]
    for fields, words in cases:
        answer = client.post(infill_url(job, 0), data=fields)
        assert answer.status_code == 400, (fields, answer.text)
        message = answer.json()["error"]
        assert words in message and "\n" not in message and "Traceback" not in message, (fields, message)
        assert "/tmp" not in message and "prompt.mid" not in message, message
    assert f"{job['pieces'][0]['name']}.mid" in client.post(infill_url(job, 0), data={"infill": "99"}).json()["error"]
    # the route itself: no such job, no such piece, a file, another content type, another method
    for url, status, words in (("/api/jobs/nope/pieces/0/infill", 404, "no such job"),
                               (infill_url(job, 2), 404, "no such piece"), (infill_url(job, -1), 404, "")):
        answer = client.post(url, data={"infill": "2"})
        assert answer.status_code == status and words in answer.json()["error"], (url, answer.text)
    answer = client.post(infill_url(job, 0), data={"infill": "2"}, files={"prompt": ("a.mid", b"MThd")})
    assert answer.status_code == 400 and "takes no file" in answer.json()["error"]
    answer = client.post(infill_url(job, 0), json={"infill": "2"})
    assert answer.status_code == 415 and "multipart/form-data" in answer.json()["error"]
    answer = client.get(infill_url(job, 0))
    assert answer.status_code == 405 and answer.json()["error"]
    answer = client.post(infill_url(job, 0), content=b"infill=2&" + b"x" * (80 * 1024),
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 413 and "too large" in answer.json()["error"]
    assert jobs_held(client) == held, "no refused request started a job"


def test_a_job_is_edited_once_it_is_done(studio) -> None:
    client, _ = studio
    answer = client.post("/api/jobs", data={"bars": "120", "seed": "1", "allow_eos": "false", "num_samples": "1"})
    assert answer.status_code == 202
    job_id = answer.json()["id"]
    early = client.post(f"/api/jobs/{job_id}/pieces/0/infill", data={"infill": "2"})
    status = client.get(f"/api/jobs/{job_id}").json()["status"]
    if status != "done":  # practically always: 120 bars take a while
        assert early.status_code == 409 and "once it is done" in early.json()["error"], early.text
    assert wait(client, job_id)["status"] == "done"


def test_ranges_checked_against_the_piece_name_it_not_the_server_path(tmp_path: Path) -> None:
    from musicgen.studio.edit import bar_ticks, check_ranges

    midi = miditoolkit.MidiFile(ticks_per_beat=480)
    piano = miditoolkit.Instrument(program=0)
    tick = 0
    for bar, (num, den) in enumerate([(4, 4)] * 4 + [(3, 4)] * 4):
        if bar in (0, 4):
            midi.time_signature_changes.append(miditoolkit.TimeSignature(num, den, tick))
        piano.notes.append(miditoolkit.Note(80, 60 + bar, tick, tick + 480))
        tick += num * 480 * 4 // den
    midi.instruments = [piano]
    path = tmp_path / "prompt.mid"
    midi.dump(str(path))
    tokenizer = REMITokenizer()
    spans = bar_ticks(path, tokenizer)
    assert len(spans) == 8 and spans[4] == (4 * 1920, 4 * 1920 + 1440)  # bar 5 is the first 3/4 bar
    check_ranges(path, "6-8", tokenizer, "variation_00.mid")
    with pytest.raises(UserError, match="metre changes") as caught:
        check_ranges(path, "4-5", tokenizer, "variation_00.mid")
    assert "variation_00.mid" in str(caught.value) and str(tmp_path) not in str(caught.value)
    with pytest.raises(UserError, match="variation_00.mid has 8 bars"):
        check_ranges(path, "8-9", tokenizer, "variation_00.mid")
    empty = tmp_path / "empty.mid"
    miditoolkit.MidiFile().dump(str(empty))
    with pytest.raises(UserError, match="no notes") as caught:
        check_ranges(empty, "1", tokenizer, "variation_00.mid")
    assert str(tmp_path) not in str(caught.value)


# --- the page's defaults ---------------------------------------------------------------------------------
def test_page_takes_the_candidates_default_from_the_server(studio) -> None:
    client, _ = studio
    info = client.get("/api/info").json()
    assert info["defaults"]["infill_candidates"] == GenerateOptions.infill_candidates
    html = client.get("/").text
    tag = html[html.index('id="infill_candidates"') - 80:].split(">")[0]
    assert " value=" not in tag and " name=" not in tag  # not part of Generate's form
    script = client.get("/static/studio.js").text
    assert "Regenerate these bars" in script and "/infill" in script


# --- only the studio's own page -------------------------------------------------------------------------
def test_edit_route_obeys_only_the_studios_own_page(note_checkpoint: Path) -> None:
    app = create_app(StudioConfig(checkpoint=str(note_checkpoint), device="cpu", workers=1, token=TOKEN))
    auth = {"Authorization": f"token {TOKEN}"}
    with TestClient(app, base_url=BASE) as client:
        script = TestClient(app, base_url=BASE, headers=auth)  # a script: the token in a header, no Origin
        job = run_job(script, "/api/jobs", {**GENERATE, "num_samples": "1"})
        url, held = infill_url(job, 0), len(app.state.manager._jobs)
        refusals = [
            ({}, "token"),  # no token
            ({"Authorization": "token wrong"}, "token"),
            ({**auth, "Origin": "http://evil.example"}, "only the studio's own page"),
            ({**auth, "Origin": "null"}, "only the studio's own page"),
            ({**auth, "Origin": BASE, "Sec-Fetch-Site": "cross-site"}, "cross-site"),
            ({**auth, "Host": "evil.example"}, "Host"),  # DNS rebinding
        ]
        for headers, words in refusals:
            answer = client.post(url, data={"infill": "2"}, headers=headers)
            assert answer.status_code == 403 and words in answer.json()["error"], (headers, answer.text)
        assert len(app.state.manager._jobs) == held, "no refused request started a job"
        # the page's own way in: the printed URL sets a cookie; its requests carry it and its own Origin
        assert client.get(f"/?token={TOKEN}").status_code == 200
        edited = run_job(client, url, {"infill": "2"}, headers={"Origin": BASE, "Sec-Fetch-Site": "same-origin"})
        assert edited["pieces"][0]["infilled_bars"] == "2"
        # and a script's
        assert run_job(script, url, {"infill": "1"})["pieces"][0]["infilled_bars"] == "1"


# --- the page in a real browser --------------------------------------------------------------------------
def test_browser_select_bars_regenerate_undo(note_checkpoint: Path, tmp_path: Path) -> None:
    from studio_support import chromium_or_skip, fetch_bytes, running, tiny_config

    webdriver, binary = chromium_or_skip()
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from studio_support import CHROMEDRIVER

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,1500", "--mute-audio", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    browser.set_page_load_timeout(120)
    try:
        with running(tiny_config(note_checkpoint, workers=1)) as base:
            browser.get(base)
            wait = WebDriverWait(browser, 300)
            wait.until(lambda d: d.find_element(By.ID, "infill_candidates").get_attribute("value") != "")
            assert browser.find_element(By.ID, "infill_candidates").get_attribute("value") == \
                str(GenerateOptions.infill_candidates)  # filled from /api/info
            prompt = tmp_path / "mine.mid"  # a prompt whose notes end at bar lines (see the `studio` fixture)
            prompt.write_bytes(made_up_prompt())
            browser.find_element(By.ID, "prompt").send_keys(str(prompt))
            for field, value in (("prompt_bars", "5"), ("bars", "2"), ("num_samples", "1"), ("seed", "3"),
                                 ("infill_candidates", "2")):
                element = browser.find_element(By.ID, field)
                element.clear()
                element.send_keys(value)
            browser.find_element(By.ID, "generate").click()
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#piece-0 canvas.roll[data-notes]")
                       or d.find_element(By.ID, "error").is_displayed())
            assert not browser.find_element(By.ID, "error").is_displayed(), browser.find_element(By.ID, "error").text
            job_id = browser.find_element(By.ID, "results").get_attribute("data-job")
            import json

            job = json.loads(fetch_bytes(f"{base}api/jobs/{job_id}"))
            roll = job["pieces"][0]["roll"]
            original = fetch_bytes(base + job["pieces"][0]["urls"]["mid"])

            # drag from the middle of bar 2 to the middle of bar 3 on the roll
            card = browser.find_element(By.ID, "piece-0")
            canvas = card.find_element(By.CSS_SELECTOR, "canvas.roll")
            width = canvas.size["width"]

            def offset(bar: int) -> int:  # from the canvas's centre, as Selenium 4 counts
                start, end = roll["measures"][bar - 1]
                return int((start + end) / 2 / roll["seconds"] * width - width / 2)

            ActionChains(browser).move_to_element_with_offset(canvas, offset(2), 0).click_and_hold() \
                .move_to_element_with_offset(canvas, offset(3), 0).release().perform()
            assert card.find_element(By.CSS_SELECTOR, "input.bar-from").get_attribute("value") == "2"
            assert card.find_element(By.CSS_SELECTOR, "input.bar-to").get_attribute("value") == "3"
            card.find_element(By.CSS_SELECTOR, "button.regenerate").click()
            assert "bars 2-3" in browser.find_element(By.ID, "status-text").text  # regenerating, or done
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#piece-0[data-edit="1"] canvas.roll[data-notes]')
                       or d.find_element(By.ID, "error").is_displayed())
            assert not browser.find_element(By.ID, "error").is_displayed(), browser.find_element(By.ID, "error").text
            card = browser.find_element(By.ID, "piece-0")
            assert "bars 2-3 regenerated" in card.find_element(By.CSS_SELECTOR, ".meta").text
            assert card.find_element(By.CSS_SELECTOR, "input.bar-from").get_attribute("value") == "2"  # kept
            edited = miditoolkit.MidiFile(file=io.BytesIO(fetch_bytes(
                card.find_element(By.CSS_SELECTOR, "a.download-mid").get_attribute("href"))))
            before = miditoolkit.MidiFile(file=io.BytesIO(original))
            spans = [tuple(s) for s in json.loads(fetch_bytes(
                f"{base}api/jobs/{card.get_attribute('data-job')}"))["pieces"][0]["infilled"]]
            assert kept_identical(before, edited, spans, ticks_per_step(before))
            assert fetch_bytes(card.find_element(By.CSS_SELECTOR, "a.download-previous").get_attribute("href")) \
                == original
            shot = os.environ.get("MUSICGEN_STUDIO_INFILL_SCREENSHOT")  # e.g. for docs/studio.md
            if shot:
                browser.execute_script("arguments[0].scrollIntoView()", card)
                browser.save_screenshot(shot)

            # a backwards range typed by hand: the server's one-line message on the page
            for name, value in (("input.bar-from", "5"), ("input.bar-to", "2")):
                element = card.find_element(By.CSS_SELECTOR, name)
                element.clear()
                element.send_keys(value)
            card.find_element(By.CSS_SELECTOR, "button.regenerate").click()
            wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
            assert "runs backwards" in browser.find_element(By.ID, "error").text

            # undo: the version before is back
            card.find_element(By.CSS_SELECTOR, "button.undo").click()
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#piece-0[data-edit="0"]'))
            card = browser.find_element(By.ID, "piece-0")
            assert fetch_bytes(card.find_element(By.CSS_SELECTOR, "a.download-mid").get_attribute("href")) == original
            assert not card.find_element(By.CSS_SELECTOR, "button.undo").is_displayed()
    finally:
        browser.quit()
