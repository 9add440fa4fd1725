"""Play forever (issue 24): the endless, steerable stream (musicgen/generation/stream.py), its studio routes
(musicgen/studio/play.py, streams.py) and ``Controls.replace`` (musicgen/generation/controls.py).

With the tiny checkpoint that leans towards notes (conftest.note_checkpoint): a stream's bars come with
increasing musical times and the notes the tokenizer's own decoder reads from the same tokens; the generator
waits when its buffer is full; a key change takes effect from the bar the server promises (every pitched note
from there on is in the new key); Save is a MIDI file of exactly the streamed bars; Stop frees the stream; past
``max_streams`` a one-line refusal; a stream whose page is gone stops; the studio's guard covers the routes.
"""

from __future__ import annotations

import io
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import miditoolkit
import numpy as np
import pytest

from musicgen.config import UserError
from musicgen.generation.chords import parse_key
from musicgen.generation.controls import ControlConfig, Controls
from musicgen.generation.guards import GuardConfig
from musicgen.generation.sampling import SamplingConfig
from musicgen.generation.bar_stream import BarGenerator, check_steer
from musicgen.generation.stream import LiveStream
from musicgen.generation.timeline import tick_to_seconds
from musicgen.inference import load_model
from musicgen.tokenizer import DRUM_PROGRAM

starlette = pytest.importorskip("starlette", reason="the studio extra is not installed: pip install -e '.[studio]'")
pytest.importorskip("multipart", reason="the studio extra is not installed: pip install -e '.[studio]'")
pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx")

with warnings.catch_warnings():  # Starlette 1.x: "Using `httpx` with TestClient is deprecated" (it still works)
    warnings.filterwarnings("ignore", message="Using `httpx`")
    from starlette.testclient import TestClient  # noqa: E402

from musicgen.studio import StudioConfig, create_app  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
BASE = "http://127.0.0.1:8000"
TOKEN = "s3cret-token"
PAGE = {"Origin": BASE, "Sec-Fetch-Site": "same-origin"}


def generator(checkpoint: Path, seed: int = 3, **controls: Any) -> BarGenerator:
    loaded = load_model(checkpoint, "cpu")
    return BarGenerator(loaded.model, loaded.tokenizer, SamplingConfig(), GuardConfig(), ControlConfig(**controls),
                        seed)


def off_key(bar_notes: list, key: str) -> list[int]:
    scale = parse_key(key)[1]
    return [note[2] for note in bar_notes if note[4] != DRUM_PROGRAM and note[2] % 12 not in scale]


# --- the generator ------------------------------------------------------------------------------------------
def test_bars_carry_the_notes_the_decoder_reads(note_checkpoint: Path) -> None:
    gen = generator(note_checkpoint)
    bars = [gen.next_bar() for _ in range(6)]
    assert [b.index for b in bars] == list(range(6))
    for before, after in zip(bars, bars[1:]):
        assert after.start == pytest.approx(before.start + before.seconds)
    for bar in bars:
        assert all(bar.start - 1e-6 <= n[0] < bar.start + bar.seconds for n in bar.notes)
    streamed = sorted((n[0], n[2]) for b in bars for n in b.notes)
    assert streamed, "the note-leaning model writes notes"
    midi = gen.midi(6)
    ticks = np.asarray([n.start for inst in midi.instruments for n in inst.notes])
    pitches = [n.pitch for inst in midi.instruments for n in inst.notes]
    decoded = sorted((float(s), p) for s, p in zip(tick_to_seconds(midi, ticks), pitches))
    assert [p for _, p in decoded] == [p for _, p in streamed]  # (a MIDI file's tempo is whole microseconds)
    assert np.allclose([t for t, _ in decoded], [t for t, _ in streamed], rtol=0.01, atol=1e-3)
    assert gen.midi(2).instruments != [] or not any(b.notes for b in bars[:2])


def test_steering_the_key_at_a_bar_line(note_checkpoint: Path) -> None:
    gen = generator(note_checkpoint, seed=4)
    for _ in range(3):
        gen.next_bar()
    gen.steer({"key": "F#", "temperature": "1.2"})
    after = [gen.next_bar() for _ in range(4)]
    assert after[0].steer == {"key": "F#", "temperature": "1.2"} and not after[1].steer
    assert gen.session.sampling.temperature == 1.2
    notes = [n for b in after for n in b.notes]
    assert notes and not off_key(notes, "F#")
    gen.steer({"key": ""})  # blank: the control is off again
    assert gen.controls.key is None


def test_check_steer_refuses_in_one_line(note_checkpoint: Path) -> None:
    vocab = load_model(note_checkpoint, "cpu").vocab
    for change, words in (({"key": "H"}, "key"), ({"temperature": "-1"}, "temperature"), ({"seed": 3}, "cannot change"),
                          ({"bpm": "5000"}, "bpm"), ({}, "nothing")):
        with pytest.raises(UserError, match=words) as info:
            check_steer(change, SamplingConfig(), ControlConfig(), vocab)
        assert "\n" not in str(info.value)


def test_a_stream_follows_a_planned_form_and_its_changes(note_checkpoint: Path) -> None:
    """form= while playing: from the next bar line the plan repeats, each letter's return resuming the stack's
    state of its first time (so the model's position, part of that state, is the same at each start of A)."""
    gen = generator(note_checkpoint, seed=6)
    gen.next_bar()  # bar 1 is open
    gen.steer({"form": "A2 B1"})  # from bar 2: A A B A A B ...
    opened = []
    for _ in range(6):
        gen.next_bar()
        opened.append(gen.session.state.position)  # just after the Bar token of bars 2..7
    assert opened[0] == opened[3] and opened[2] == opened[5]  # A at 2 and 5, B at 4 and 7
    assert opened[1] > opened[0] and opened[4] > opened[3]  # inside a section the piece goes on
    assert set(gen.form.kept) == {"A", "B"}
    gen.steer({"form": "A2 C1"})  # a new plan keeps A's music
    assert gen.form.kept.keys() >= {"A", "B"} and gen.form.origin == gen.bars + 1
    gen.next_bar()
    assert gen.session.state.position == opened[0]  # A resumed at once
    gen.steer({"form": ""})
    assert gen.form is None
    with pytest.raises(UserError, match="form") as info:
        check_steer({"form": "A8 B"}, SamplingConfig(), ControlConfig(), gen.vocab)
    assert "\n" not in str(info.value)


def test_play_takes_a_planned_form(note_checkpoint: Path) -> None:
    from musicgen.studio.streams import play_options

    options = play_options({"form": "A4 B4", "form_recall": "1.5"}, None, str(note_checkpoint), "cpu")
    assert options.form == "A4 B4" and options.form_recall == 1.5
    gen = BarGenerator(*_loaded_parts(note_checkpoint), seed=2, form=options.form, form_recall=options.form_recall)
    assert gen.form is not None and gen.form.origin == 1 and gen.form.cycle
    with pytest.raises(UserError, match="form"):
        play_options({"form": "A4 B"}, None, str(note_checkpoint), "cpu")


def _loaded_parts(checkpoint: Path) -> tuple:
    loaded = load_model(checkpoint, "cpu")
    return loaded.model, loaded.tokenizer, SamplingConfig(), GuardConfig(), ControlConfig()


def test_controls_replace_chart_and_tempo(note_checkpoint: Path) -> None:
    gen = generator(note_checkpoint, seed=5)
    gen.next_bar()
    gen.steer({"chords": "Am F", "bpm": "90"})  # right after a Bar token: the chart starts in this bar
    bars = [gen.next_bar() for _ in range(3)]
    assert bars[0].bpm == pytest.approx(gen.controls.resolved(gen.vocab)["tempo_bpm"])
    rule = gen.session.rule(Controls)
    report = rule.report(0)
    assert report["forced_chords"] >= 3 and report["forced_tempo"] == 1
    midi = gen.midi()
    chords = [m.text for m in midi.markers]
    assert chords[:3] == ["Chord_A:min", "Chord_F:maj", "Chord_A:min"] or "A:min" in chords[0]
    with pytest.raises(ValueError, match="no setting"):
        rule.replace(colour="red")


def test_live_stream_waits_when_its_buffer_is_full(note_checkpoint: Path) -> None:
    stream = LiveStream(lambda: generator(note_checkpoint), ahead_bars=2)
    try:
        assert stream.bars_from(2, timeout=60)
        time.sleep(0.5)
        held = stream.generator.steps
        time.sleep(0.5)
        assert stream.bars_written == 3 and stream.generator.steps == held, "it waits for the player"
        stream.played(3.5)
        deadline = time.time() + 60
        while stream.bars_written < 6 and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert stream.bars_written == 6  # bar 3 playing, 4 and 5 ahead
        record = stream.steer({"key": "Eb"})
        assert record["from_bar"] == 6 and record["latency_bars"] == 3  # waiting at the line of bar 6
    finally:
        stream.stop()
    assert stream.status == "stopped"


# --- the studio's routes ------------------------------------------------------------------------------------
def read_events(text: str) -> list[tuple[str, dict[str, Any], str]]:
    out = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "data" in fields:
            out.append((fields.get("event", "message"), json.loads(fields["data"]), fields.get("id", "")))
    return out


def start(client: TestClient, fields: dict[str, str] | None = None, **kwargs: Any) -> dict[str, Any]:
    answer = client.post("/api/streams", data={"seed": "3", **(fields or {})}, **kwargs)
    assert answer.status_code == 201, answer.text
    return answer.json()


def bars(client: TestClient, stream: str, first: int, count: int, **kwargs: Any) -> list[dict[str, Any]]:
    client.post(f"/api/streams/{stream}/position", json={"bar": first + count}, **kwargs)
    answer = client.get(f"/api/streams/{stream}/events?from={first}&bars={count}", **kwargs)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
    events = read_events(answer.text)
    assert [e[0] for e in events] == ["bar"] * count
    return [e[1] for e in events]


@pytest.fixture(params=[True, False], ids=["processes", "threads"])
def studio(note_checkpoint: Path, request: pytest.FixtureRequest):
    app = create_app(StudioConfig(checkpoint=str(note_checkpoint), device="cpu", workers=1, max_streams=1,
                                  stream_processes=request.param))
    with TestClient(app, base_url=BASE) as client:
        yield client


def test_stream_plays_steers_saves_and_stops(studio: TestClient) -> None:
    client = studio
    made = start(client, {"key": "C", "temperature": "1.0"})
    sid = made["id"]
    first = bars(client, sid, 0, 4)
    assert [b["index"] for b in first] == [0, 1, 2, 3]
    starts = [b["start"] for b in first]
    assert starts == sorted(starts) and starts[0] == 0
    assert all(b["start"] <= n[0] < b["start"] + b["seconds"] + 1e-3 for b in first for n in b["notes"])
    assert not off_key([n for b in first for n in b["notes"]], "C")
    # a key change: from the promised bar on, every pitched note is in the new key
    answer = client.post(f"/api/streams/{sid}/steer", json={"key": "F#"})
    assert answer.status_code == 200, answer.text
    promise = answer.json()
    assert promise["settings"] == {"key": "F#"}
    assert 1 <= promise["latency_bars"] <= made["ahead_bars"] + 1
    later = bars(client, sid, promise["from_bar"], 3)
    assert later[0]["steer"] == {"key": "F#"}
    notes = [n for b in later for n in b["notes"]]
    assert notes and not off_key(notes, "F#")
    # reconnecting (Last-Event-ID) resumes after the last bar seen
    again = client.get(f"/api/streams/{sid}/events?bars=1", headers={"Last-Event-ID": "1"})
    assert read_events(again.text)[0][2] == "2"
    # Save: the first 4 bars, note for note as streamed
    saved = client.get(f"/api/streams/{sid}/midi?bars=4")
    assert saved.status_code == 200 and saved.headers["content-type"] == "audio/midi"
    midi = miditoolkit.MidiFile(file=io.BytesIO(saved.content))
    assert sorted(n.pitch for inst in midi.instruments for n in inst.notes) == \
        sorted(n[2] for b in first for n in b["notes"])
    # the limit: one stream at a time here
    refused = client.post("/api/streams", data={"seed": "4"})
    assert refused.status_code == 503 and "--max-streams" in refused.json()["error"]
    assert "\n" not in refused.json()["error"]
    bad = client.post(f"/api/streams/{sid}/steer", json={"key": "H#"})
    assert bad.status_code == 400 and "key" in bad.json()["error"]
    # Stop frees it: the events end, another stream may start, Save still works
    stopped = client.post(f"/api/streams/{sid}/stop")
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    assert client.app.state.streams.playing() == 0
    tail = read_events(client.get(f"/api/streams/{sid}/events?from=999").text)
    assert tail[-1][0] == "end"
    assert client.post(f"/api/streams/{sid}/steer", json={"key": "C"}).status_code == 409
    assert client.get(f"/api/streams/{sid}/midi").status_code == 200
    other = start(client, {"seed": "5"})
    client.post(f"/api/streams/{other['id']}/stop")


def test_bad_play_forms_are_one_line_refusals(studio: TestClient) -> None:
    for fields, words in (({"key": "H"}, "key"), ({"bpm": "abc"}, "bpm"), ({"colour": "red"}, "unknown")):
        answer = studio.post("/api/streams", data=fields)
        assert answer.status_code == 400 and words in answer.json()["error"], answer.text
    assert studio.app.state.streams.playing() == 0
    assert studio.get("/api/streams/nope").status_code == 404


def test_a_stream_whose_page_is_gone_stops(note_checkpoint: Path) -> None:
    app = create_app(StudioConfig(checkpoint=str(note_checkpoint), device="cpu", workers=1,
                                  stream_idle_seconds=0.5))
    with TestClient(app, base_url=BASE) as client:
        sid = start(client)["id"]
        deadline = time.time() + 30
        while client.app.state.streams.playing() and time.time() < deadline:
            time.sleep(0.1)
        entry = client.app.state.streams.get(sid)
        assert entry.stream.status == "stopped" and "page was gone" in entry.reason


def test_play_routes_obey_only_the_studios_own_page(note_checkpoint: Path) -> None:
    app = create_app(StudioConfig(checkpoint=str(note_checkpoint), device="cpu", workers=1, token=TOKEN))
    auth = {"Authorization": f"token {TOKEN}"}
    with TestClient(app, base_url=BASE) as client:
        refusals = [
            ({}, "token"), ({"Authorization": "token wrong"}, "token"),
            ({**auth, "Origin": "http://evil.example"}, "only the studio's own page"),
            ({**auth, "Origin": "null"}, "only the studio's own page"),
            ({**auth, "Origin": BASE, "Sec-Fetch-Site": "cross-site"}, "cross-site"),
            ({**auth, "Host": "evil.example"}, "Host"),
        ]
        for headers, words in refusals:
            answer = client.post("/api/streams", data={"seed": "1"}, headers=headers)
            assert answer.status_code == 403 and words in answer.json()["error"], (headers, answer.text)
        assert app.state.streams.playing() == 0, "no refused request started a stream"
        assert client.get(f"/?token={TOKEN}").status_code == 200  # the page's cookie
        sid = start(client, headers=PAGE)["id"]
        outsider = TestClient(app, base_url=BASE)
        assert outsider.get(f"/api/streams/{sid}/events?bars=1").status_code == 403
        assert outsider.get(f"/api/streams/{sid}/midi").status_code == 403
        for route, body in (("steer", {"key": "G"}), ("position", {"bar": 9}), ("stop", {})):
            answer = client.post(f"/api/streams/{sid}/{route}", json=body,
                                 headers={**auth, "Origin": "http://evil.example"})
            assert answer.status_code == 403, route
        assert app.state.streams.get(sid).stream.alive and app.state.streams.get(sid).stream.played_bars == 0
        assert len(bars(client, sid, 0, 2, headers=PAGE)) == 2
        assert client.post(f"/api/streams/{sid}/stop", headers=PAGE).status_code == 200


# --- the page in a real browser -----------------------------------------------------------------------------
def test_browser_plays_steers_saves_and_stops(note_checkpoint: Path) -> None:
    from studio_support import CHROMEDRIVER, chromium_or_skip, fetch_bytes, running, tiny_config

    webdriver, binary = chromium_or_skip()
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,1500",
                "--mute-audio", "--no-first-run", "--disable-extensions", "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    browser.set_page_load_timeout(120)
    played = "return window.musicgenPlay.bars.map(b => [b.index, b.notes.map(n => [n[2], n[4]]), b.steer])"
    try:
        with running(tiny_config(note_checkpoint, workers=1, stream_ahead_bars=8)) as base:
            browser.get(base)
            wait = WebDriverWait(browser, 120)
            seed = browser.find_element(By.ID, "seed")
            seed.clear()
            seed.send_keys("3")
            browser.find_element(By.ID, "play").click()
            wait.until(lambda d: len(d.execute_script(played)) >= 8 or d.find_element(By.ID, "error").is_displayed())
            assert not browser.find_element(By.ID, "error").is_displayed(), browser.find_element(By.ID, "error").text
            assert browser.execute_script("return window.musicgenPlay.scheduled") > 0  # notes went to Web Audio
            stream = browser.execute_script("return window.musicgenPlay.id")
            key = browser.find_element(By.ID, "key")
            key.send_keys("F#")
            browser.execute_script("arguments[0].dispatchEvent(new Event('change', {bubbles: true}))", key)
            wait.until(lambda d: "from bar" in d.find_element(By.ID, "play-steer").text)
            from_bar = int(browser.find_element(By.ID, "play-steer").text.split("from bar ")[1].split()[0]) - 1
            wait.until(lambda d: any(b[0] >= from_bar + 1 for b in d.execute_script(played)))
            bars_seen = browser.execute_script(played)
            after = [b for b in bars_seen if b[0] >= from_bar]
            assert after[0][2] == {"key": "F#"}
            notes = [[0, 0, p, 0, g] for b in after for p, g in b[1]]
            assert not off_key(notes, "F#")
            midi = miditoolkit.MidiFile(file=io.BytesIO(fetch_bytes(f"{base}api/streams/{stream}/midi?bars=4")))
            assert sorted(n.pitch for inst in midi.instruments for n in inst.notes) == \
                sorted(p for b in bars_seen if b[0] < 4 for p, _ in b[1])
            browser.find_element(By.ID, "play-stop").click()
            wait.until(lambda d: d.find_element(By.ID, "play").is_enabled())
            assert json.loads(fetch_bytes(f"{base}api/streams/{stream}"))["status"] == "stopped"
            shot = os.environ.get("MUSICGEN_STREAM_SCREENSHOT")  # to look at it
            if shot:
                browser.save_screenshot(shot)
    finally:
        browser.quit()


def test_play_off_with_max_streams_zero(note_checkpoint: Path) -> None:
    app = create_app(StudioConfig(checkpoint=str(note_checkpoint), device="cpu", workers=1, max_streams=0))
    with TestClient(app, base_url=BASE) as client:
        answer = client.post("/api/streams", data={"seed": "1"})
        assert answer.status_code == 503 and "--max-streams 0" in answer.json()["error"]
        assert client.get("/api/info").json()["max_streams"] == 0


def test_a_prompt_starts_the_stream(studio: TestClient) -> None:
    from studio_support import made_up_prompt

    made = start(studio, {"prompt_bars": "4", "key": "C"},
                 files={"prompt": ("mine.mid", made_up_prompt(5), "audio/midi")})
    sid = made["id"]
    streamed = bars(studio, sid, 0, 3)
    assert [b["index"] for b in streamed] == [0, 1, 2] and streamed[0]["start"] == 0
    saved = miditoolkit.MidiFile(file=io.BytesIO(studio.get(f"/api/streams/{sid}/midi?bars=3").content))
    assert sorted(n.pitch for inst in saved.instruments for n in inst.notes) == \
        sorted(n[2] for b in streamed for n in b["notes"]), "Save holds the stream, not the prompt"
    bad = studio.post("/api/streams", data={"seed": "1"}, files={"prompt": ("notes.mid", b"not midi", "audio/midi")})
    assert bad.status_code == 400 and "\n" not in bad.json()["error"]
    studio.post(f"/api/streams/{sid}/stop")
