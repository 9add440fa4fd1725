"""The studio's planned form (musicgen/studio/params.py `form`, `form_chords`, `form_recall`; roll.py sections).

Through Starlette's TestClient with the tiny checkpoint that leans towards notes (conftest.note_checkpoint): a
Generate press with ``form="A2 B1 A2"`` gives pieces whose status and roll data carry the sections (letters,
first bars, and the second each starts at: the start of that bar of the roll); with a prompt, the prompt is the
first section; an edit keeps its piece's sections; a piece without a plan has none. Bad forms and options that
cannot go with a form are one-line JSON 4xx answers that start no job; the guard applies as to every route. A
browser test checks in headless Chromium that the letters are drawn above the roll (skipped where Chromium or
Selenium is missing, as the studio's other browser tests)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest

pytest.importorskip("starlette", reason="the studio extra is not installed: pip install -e '.[studio]'")
pytest.importorskip("multipart", reason="the studio extra is not installed: pip install -e '.[studio]'")
pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx")

with warnings.catch_warnings():  # Starlette 1.x: "Using `httpx` with TestClient is deprecated" (it still works)
    warnings.filterwarnings("ignore", message="Using `httpx`")
    from starlette.testclient import TestClient  # noqa: E402

from musicgen.generation.options import GenerateOptions  # noqa: E402
from musicgen.studio import StudioConfig, create_app  # noqa: E402
from musicgen.studio.roll import section_starts  # noqa: E402
from studio_support import BASE, TOKEN, infill_url, jobs_held, made_up_prompt, run_job  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
FORM = {"form": "A2 B1 A2", "seed": "3", "num_samples": "2"}
PLAN = [{"letter": "A", "bars": 2, "first_bar": 1, "from": "new"},
        {"letter": "B", "bars": 1, "first_bar": 3, "from": "new"},
        {"letter": "A", "bars": 2, "first_bar": 4, "from": "returns"}]


@pytest.fixture(scope="module")
def studio(note_checkpoint: Path) -> Iterator[tuple[TestClient, dict[str, Any]]]:
    """A studio on the tiny model and a finished job: two variations of the form A2 B1 A2, no prompt."""
    app = create_app(StudioConfig(checkpoint=str(note_checkpoint), device="cpu", workers=1))
    with TestClient(app, base_url=BASE) as client:
        yield client, run_job(client, "/api/jobs", FORM)


def check_sections(piece: dict[str, Any], plan: list[dict[str, Any]]) -> None:
    """The piece's sections are `plan`; its roll places each at the start of its first bar, as numbered."""
    assert piece["sections"] == plan
    roll = piece["roll"]
    assert [{k: s[k] for k in ("letter", "bars", "first_bar", "from")} for s in roll["sections"]] == plan
    assert [s["start"] for s in roll["sections"]] == [roll["measures"][s["first_bar"] - 1][0] for s in plan]
    assert all(0 <= s["start"] < roll["seconds"] for s in roll["sections"])


# --- a planned form ---------------------------------------------------------------------------------------
def test_form_gives_pieces_with_their_sections(studio) -> None:
    client, job = studio
    assert job["form"] == "A2 B1 A2" and job["bars"] is None and len(job["pieces"]) == 2
    for piece in job["pieces"]:
        check_sections(piece, PLAN)
        assert piece["measures"] >= 5 and piece["bars"] == 5 and piece["stop_reason"] == "bars"
        settings = client.get("/" + piece["urls"]["json"]).json()
        assert settings["form"] == PLAN and settings["seed"] == 3
    assert client.get(f"/api/jobs/{job['id']}").json()["pieces"][0]["sections"] == PLAN  # what the page polls


def test_form_with_a_prompt_chords_and_recall(studio) -> None:
    client, _ = studio
    job = run_job(client, "/api/jobs", {**FORM, "num_samples": "1", "prompt_bars": "2", "form_recall": "0",
                                        "form_chords": "A: C G; B: F"},
                  files={"prompt": ("mine.mid", made_up_prompt(3), "audio/midi")})
    piece = job["pieces"][0]
    check_sections(piece, [{**PLAN[0], "from": "prompt"}, *PLAN[1:]])
    assert piece["roll"]["prompt_end"] == piece["roll"]["sections"][1]["start"]  # B starts where the prompt ends
    settings = client.get("/" + piece["urls"]["json"]).json()
    assert settings["controls"]["chords"] == "F | C | G"  # the sections' charts after the prompt's A


def test_an_edit_keeps_the_sections_and_no_plan_has_none(studio) -> None:
    client, job = studio
    edited = run_job(client, infill_url(job, 0), {"infill": "3", "infill_candidates": "1"})
    assert edited["form"] is None
    check_sections(edited["pieces"][0], PLAN)  # an edit keeps the piece's bars, so its letters
    plain = run_job(client, "/api/jobs", {"bars": "2", "seed": "3", "num_samples": "1"})
    assert plain["form"] is None and plain["pieces"][0]["sections"] == [] == plain["pieces"][0]["roll"]["sections"]


def test_bad_forms_are_one_line_4xx_and_start_no_job(studio) -> None:
    client, _ = studio
    held = jobs_held(client)
    prompt = {"prompt": ("mine.mid", made_up_prompt(3), "audio/midi")}
    cases = [
        ({"form": "A8 B"}, None, "'B' is not a section"),
        ({"form": "A8 B4 A4"}, None, "keeps its length"),
        ({"form": "A8 B8 A8", "bars": "8"}, None, "bars cannot be set with form"),
        ({"form": "A2 B2", "chords": "C G", "form_chords": "A: C; B: G"}, None, "chords cannot be set with form"),
        ({"form": "A2 B2", "form_chords": "A: C"}, None, "no chart for section(s) B"),
        ({"form": "A2 B2", "form_chords": "A C"}, None, "colon"),
        ({"form_chords": "A: C"}, None, "needs a form"),
        ({"form": "A2 B2", "form_recall": "-1"}, None, "form_recall"),
        ({"form": "A2 B2", "form_recall": "lots"}, None, "form_recall"),
        ({"form": "A300 B300"}, None, "at most 512 bars"),
        ({"form": "A4 B2", "prompt_bars": "2"}, prompt, "write A2 or keep 4 bars"),
        ({"form": "A2 B2", "chords": "Hx"}, None, "unknown chord symbol 'Hx'"),
    ]
    for fields, files, words in cases:
        answer = client.post("/api/jobs", data=fields, files=files)
        assert answer.status_code == 400, (fields, answer.text)
        message = answer.json()["error"]
        assert words in message and "\n" not in message and "Traceback" not in message, (fields, message)
        assert "/tmp" not in message and "prompt.mid" not in message, message
    assert jobs_held(client) == held, "no refused request started a job"


def test_sections_beyond_the_roll_are_left_out() -> None:
    plan = [{"letter": "A", "bars": 2, "first_bar": 1}, {"letter": "B", "bars": 2, "first_bar": 3},
            {"letter": "C", "bars": 2, "first_bar": 5}]
    assert section_starts(plan, [[0.0, 2.0], [2.0, 4.0]], [0.0, 2.0, 4.0, 6.0]) == [
        {"letter": "A", "bars": 2, "first_bar": 1, "from": "new", "start": 0.0},
        {"letter": "B", "bars": 2, "first_bar": 3, "from": "new", "start": 4.0}]  # a downbeat past the measures
    assert section_starts([], [[0.0, 2.0]], [0.0]) == []


# --- the page's defaults ---------------------------------------------------------------------------------
def test_page_takes_the_recall_default_from_the_server(studio) -> None:
    client, _ = studio
    info = client.get("/api/info").json()
    assert info["defaults"]["form_recall"] == GenerateOptions.form_recall
    assert {"form", "form_chords", "form_recall"} <= set(info["fields"])
    html = client.get("/").text
    for name in ("form_plan", "form_chords", "form_recall"):
        tag = html[html.index(f'id="{name}"') - 80:].split(">")[0]
        assert " value=" not in tag, tag  # no default written into the page
    script = client.get("/static/studio.js").text
    assert "roll.sections" in script and "form_plan" in script


# --- only the studio's own page -------------------------------------------------------------------------
def test_form_requests_obey_only_the_studios_own_page(note_checkpoint: Path) -> None:
    app = create_app(StudioConfig(checkpoint=str(note_checkpoint), device="cpu", workers=1, token=TOKEN))
    auth = {"Authorization": f"token {TOKEN}"}
    fields = {**FORM, "num_samples": "1"}
    with TestClient(app, base_url=BASE) as client:
        refusals = [
            ({}, "token"),  # no token
            ({"Authorization": "token wrong"}, "token"),
            ({**auth, "Origin": "http://evil.example"}, "only the studio's own page"),
            ({**auth, "Origin": "null"}, "only the studio's own page"),
            ({**auth, "Origin": BASE, "Sec-Fetch-Site": "cross-site"}, "cross-site"),
            ({**auth, "Host": "evil.example"}, "Host"),  # DNS rebinding
        ]
        for headers, words in refusals:
            answer = client.post("/api/jobs", data=fields, headers=headers)
            assert answer.status_code == 403 and words in answer.json()["error"], (headers, answer.text)
        assert len(app.state.manager._jobs) == 0, "no refused request started a job"
        # a bad form from the page itself: the form's own message, not the guard's
        assert client.get(f"/?token={TOKEN}").status_code == 200
        page = {"Origin": BASE, "Sec-Fetch-Site": "same-origin"}
        answer = client.post("/api/jobs", data={"form": "A8 B"}, headers=page)
        assert answer.status_code == 400 and "not a section" in answer.json()["error"]
        # the page's own way in, and a script's
        check_sections(run_job(client, "/api/jobs", fields, headers=page)["pieces"][0], PLAN)
        script = TestClient(app, base_url=BASE, headers=auth)
        check_sections(run_job(script, "/api/jobs", fields)["pieces"][0], PLAN)


# --- the page in a real browser --------------------------------------------------------------------------
def test_browser_draws_the_section_letters(note_checkpoint: Path) -> None:
    from studio_support import CHROMEDRIVER, chromium_or_skip, fetch_bytes, running, tiny_config

    webdriver, binary = chromium_or_skip()
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,1500", "--mute-audio", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    browser.set_page_load_timeout(120)
    # the darkest pixel of the strip above the roll around `at` (a fraction of its width), and the strip's
    # colour at its far right
    probe = """const [canvas, at] = arguments; const r = window.devicePixelRatio || 1;
      const x = at * canvas.clientWidth;
      const ctx = canvas.getContext("2d"); let dark = 255;
      const px = ctx.getImageData(Math.max(0, Math.round((x - 2) * r)), Math.round(3 * r), Math.round(4 * r), 1).data;
      for (let i = 0; i < px.length; i += 4) dark = Math.min(dark, px[i]);
      const far = ctx.getImageData(canvas.width - 2, Math.round(3 * r), 1, 1).data;
      return [dark, far[0], far[1], far[2]];"""
    try:
        with running(tiny_config(note_checkpoint, workers=1)) as base:
            browser.get(base)
            wait = WebDriverWait(browser, 300)
            wait.until(lambda d: d.find_element(By.ID, "form_recall").get_attribute("value") != "")
            assert float(browser.find_element(By.ID, "form_recall").get_attribute("value")) == \
                GenerateOptions.form_recall  # filled from /api/info
            for field, value in (("form_plan", "A2 B1 A2"), ("num_samples", "1"), ("seed", "3")):
                element = browser.find_element(By.ID, field)
                element.clear()
                element.send_keys(value)
            assert not browser.find_element(By.ID, "bars").is_enabled()  # the plan sets the length
            browser.find_element(By.ID, "generate").click()
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#piece-0 canvas.roll[data-notes]")
                       or d.find_element(By.ID, "error").is_displayed())
            assert not browser.find_element(By.ID, "error").is_displayed(), browser.find_element(By.ID, "error").text
            card = browser.find_element(By.ID, "piece-0")
            canvas = card.find_element(By.CSS_SELECTOR, "canvas.roll")
            assert canvas.get_attribute("data-sections") == "A@1 B@3 A@4"
            assert card.find_element(By.CSS_SELECTOR, ".meta .sections").text == "form A2 B1 A2"
            job = json.loads(fetch_bytes(f"{base}api/jobs/{browser.find_element(By.ID, 'results').get_attribute('data-job')}"))
            roll = job["pieces"][0]["roll"]
            for section in roll["sections"][1:]:  # a marker line in the strip at each later section's start
                dark, *_ = browser.execute_script(probe, canvas, section["start"] / roll["seconds"])
                assert dark < 120, (section, dark)
            _, *strip = browser.execute_script(probe, canvas, 0.5)
            assert strip == [0xEC, 0xEE, 0xF5]  # the strip's background
            shot = os.environ.get("MUSICGEN_STUDIO_FORM_SCREENSHOT")  # to look at it
            if shot:
                browser.execute_script("arguments[0].scrollIntoView()", card)
                browser.save_screenshot(shot)

            # without a plan: no strip, no letters, and the length field is back
            browser.find_element(By.ID, "form_plan").clear()
            browser.find_element(By.ID, "form_plan").send_keys(" ")
            bars = browser.find_element(By.ID, "bars")
            assert bars.is_enabled()
            bars.clear()
            bars.send_keys("2")
            browser.find_element(By.ID, "generate").click()
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#piece-0 canvas.roll[data-notes]:not([data-sections])")
                       or d.find_element(By.ID, "error").is_displayed())
            assert not browser.find_element(By.ID, "error").is_displayed(), browser.find_element(By.ID, "error").text
            canvas = browser.find_element(By.CSS_SELECTOR, "#piece-0 canvas.roll")
            _, *corner = browser.execute_script(probe, canvas, 0)
            assert corner != [0xEC, 0xEE, 0xF5]
    finally:
        browser.quit()
