"""Hostile inputs, round two (issue 20): options that were silently wrong, tiny files that cost gigabytes, web
pages that drove the studio, loose ends that ended in tracebacks.

Every test name contains `hostile` or `fault`. Memory-bound cases run in a subprocess under
`resource.setrlimit(RLIMIT_AS)`, so a regression fails with a MemoryError instead of taking the machine down.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from musicgen.config import UserError, check_bool
from musicgen.evaluation.report import EvaluateOptions
from musicgen.generation import GenerateOptions
from musicgen.model import build_model
from musicgen.tokenizer import REMITokenizer, TokenizerConfig

from support import TINY, env, run_cli, serve_studio, single_error_line

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------------- #
# (1) yes/no options given as words
# --------------------------------------------------------------------------------------------------------- #
@pytest.mark.parametrize("word, meaning", [("no", False), ("off", False), ("false", False), ("0", False),
                                           ("No", False), ("yes", True), ("on", True), ("TRUE", True),
                                           ("1", True), (True, True), (False, False), (0, False)])
def test_hostile_yes_no_words_mean_what_they_say(word, meaning) -> None:
    assert check_bool("x", word) is meaning
    options = GenerateOptions(include_prompt=word, allow_eos=word, pianoroll=word, no_repeated_pitch=word,
                              progress=word)
    assert (options.include_prompt, options.allow_eos, options.pianoroll, options.no_repeated_pitch,
            options.progress) == (meaning,) * 5
    assert options.stop.allow_eos is meaning and options.guards.no_repeated_pitch is meaning
    assert EvaluateOptions(progress=word).progress is meaning
    assert TokenizerConfig(chords=word, programs=word).chords is meaning


@pytest.mark.parametrize("option", ["include_prompt", "allow_eos", "pianoroll", "no_repeated_pitch", "progress"])
@pytest.mark.parametrize("word", ["maybe", "", "2", 2, None])
def test_hostile_yes_no_options_refuse_anything_else(option: str, word) -> None:
    with pytest.raises(UserError, match=f"^{option} must be true or false"):
        GenerateOptions(**{option: word})
    with pytest.raises(ValueError, match="tokenizer.chords must be true or false"):
        TokenizerConfig(chords=word)


@pytest.mark.parametrize("tool, args, option", [
    ("generate", ["allow_eos=maybe"], "allow_eos"), ("generate", ["include_prompt=perhaps"], "include_prompt"),
    ("generate", ["pianoroll=sometimes"], "pianoroll"), ("evaluate", ["progress=kinda"], "progress"),
])
def test_hostile_yes_no_words_on_the_command_line(tool: str, args: list[str], option: str, tiny_checkpoint: Path,
                                                  tmp_path: Path) -> None:
    proc = run_cli([str(REPO / f"{tool}.py"), f"checkpoint={tiny_checkpoint}", f"output_dir={tmp_path / 'out'}", *args],
                   tmp_path)
    assert option in single_error_line(proc)
    assert not (tmp_path / "out").exists()


def test_hostile_allow_eos_no_really_never_ends(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """`allow_eos=no` on the command line: every sample runs to its token limit and the .json records false."""
    import json

    proc = run_cli([str(REPO / "generate.py"), f"checkpoint={tiny_checkpoint}", f"output_dir={tmp_path}",
                    "allow_eos=no", "include_prompt=off", "pianoroll=off", "bars=null", "tokens=40", "seed=3",
                    "device=cpu", "progress=no"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((tmp_path / "sample_00.json").read_text())
    assert meta["stop"]["allow_eos"] is False and meta["include_prompt"] is False
    assert meta["stop_reason"] == "tokens"
    assert not list(tmp_path.glob("*.png"))


# --------------------------------------------------------------------------------------------------------- #
# (2) impossible models, crafted checkpoints
# --------------------------------------------------------------------------------------------------------- #
@pytest.mark.parametrize("change, option", [
    ({"n_layers": 0}, "n_layers"), ({"n_layers": -1}, "n_layers"), ({"d_ff": 0}, "d_ff"),
    ({"d_model": 0}, "d_model"), ({"n_heads": 0}, "n_heads"), ({"n_heads": -2}, "n_heads"),
    ({"d_model": 30, "n_heads": 4}, "n_heads"), ({"dropout": 1.5}, "dropout"), ({"dropout": -0.1}, "dropout"),
])
def test_hostile_impossible_model_options_are_refused_up_front(change: dict, option: str, tmp_path: Path) -> None:
    from musicgen.model.config import ModelConfig

    with pytest.raises(ValueError, match=option):
        ModelConfig.from_mapping({**TINY, **change})
    with pytest.raises(ValueError, match=option):
        build_model({**TINY, **change}, 100)


@pytest.mark.parametrize("override, option", [("model.n_layers=0", "model.n_layers"),
                                              ("model.n_layers=-1", "model.n_layers"),
                                              ("model.d_ff=0", "model.d_ff"), ("model.d_model=0", "model.d_model"),
                                              ("model.n_heads=0", "model.n_heads")])
def test_hostile_impossible_model_never_trains(override: str, option: str, tmp_path: Path) -> None:
    """Refused by train.py before any data, folder or model exists (once: exit 0 and a checkpoint without
    layers, or a ZeroDivisionError traceback)."""
    proc = run_cli([str(REPO / "train.py"), override, f"data.root={tmp_path / 'no-data'}",
                    f"data.cache_dir={tmp_path / 'cache'}", f"train.ckpt_dir={tmp_path / 'ckpt'}", "logger=none",
                    "device=cpu", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert option in single_error_line(proc)
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "cache").exists()


def _crafted(tiny_checkpoint: Path, dest: Path, **edits) -> Path:
    data = torch.load(tiny_checkpoint, weights_only=True)
    for key, value in edits.items():
        data[key] = value(data[key]) if callable(value) else value
    torch.save(data, dest)
    return dest


def test_hostile_nan_weights_are_refused_naming_the_file(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from musicgen.inference import load_checkpoint

    for bad in (float("nan"), float("inf")):
        def poison(state, bad=bad):
            state = dict(state)
            state["embed.weight"] = state["embed.weight"].clone()
            state["embed.weight"][3, 1] = bad
            return state

        path = _crafted(tiny_checkpoint, tmp_path / "nan.pt", model_state=poison)
        with pytest.raises(ValueError, match="NaN or infinite") as info:
            load_checkpoint(path)
        assert str(path) in str(info.value) and "embed.weight" in str(info.value)
    for tool in ("generate", "evaluate"):
        proc = run_cli([str(REPO / f"{tool}.py"), f"checkpoint={path}", f"output_dir={tmp_path / tool}",
                        "device=cpu", "progress=false"], tmp_path)
        assert str(path) in single_error_line(proc)
        assert not list((tmp_path / tool).glob("*.mid")) and not (tmp_path / tool / "nll.json").exists()


_BOMB_SCRIPT = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), int(sys.argv[2])))
from musicgen.inference import load_model
try:
    load_model(sys.argv[1])
except ValueError as exc:
    print("REFUSED", exc)
"""


def _address_space_limit(extra_mb: int) -> int:
    """This interpreter's address space with torch and musicgen imported, plus `extra_mb`."""
    probe = ("import torch, musicgen.inference, musicgen.model;"
             "print([l for l in open('/proc/self/status') if l.startswith('VmPeak')][0].split()[1])")
    proc = subprocess.run([sys.executable, "-c", probe], env=env(), capture_output=True, text=True, timeout=120)
    return (int(proc.stdout.strip()) + extra_mb * 1024) * 1024


@pytest.mark.parametrize("edit", ["deep_and_wide", "wide", "tempo_bins", "vocab_size"])
def test_hostile_config_bomb_checkpoint_is_refused_before_allocating(edit: str, tiny_checkpoint: Path,
                                                                      tmp_path: Path) -> None:
    """A small file whose stored config claims a model of gigabytes (or a vocabulary of 200 M tempo bins) is
    refused before anything is built, under an address-space limit of 1 GiB above the interpreter's own."""
    if edit == "deep_and_wide":
        edits = {"model_config": lambda c: {**c, "n_layers": 400, "d_model": 4096, "d_ff": 16384}}
    elif edit == "wide":
        edits = {"model_config": lambda c: {**c, "d_model": 4096, "d_ff": 16384}}
    elif edit == "tempo_bins":
        edits = {"vocab": lambda v: {**v, "tokenizer": {**v["tokenizer"], "tempo_bins": 200_000_000}}}
    else:
        edits = {"model_config": lambda c: {**c, "vocab_size": 50_000_000}}
    path = _crafted(tiny_checkpoint, tmp_path / "bomb.pt", **edits)
    assert path.stat().st_size < 2_000_000
    proc = subprocess.run([sys.executable, "-c", _BOMB_SCRIPT, str(path), str(_address_space_limit(1024))],
                          env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "REFUSED" in proc.stdout, (proc.stdout + proc.stderr)[-3000:]
    assert str(path) in proc.stdout and "\n" not in proc.stdout.strip()


def test_hostile_checkpoint_shapes_are_compared_before_building(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from musicgen.inference import load_model

    path = _crafted(tiny_checkpoint, tmp_path / "wide.pt", model_config=lambda c: {**c, "d_ff": 128})
    with pytest.raises(ValueError, match=r"weights do not fit its model config \(blocks.0.ff.0.bias: \[64\] in the "
                                         r"file, \[128\] in the config"):
        load_model(path)
    path = _crafted(tiny_checkpoint, tmp_path / "zero.pt", model_config=lambda c: {**c, "n_layers": 0})
    with pytest.raises(ValueError, match="impossible model config .*n_layers"):
        load_model(path)
    assert load_model(tiny_checkpoint).model.config["n_layers"] == TINY["n_layers"]


def test_hostile_grid_bomb_on_the_check_command_is_one_line(tmp_path: Path, pop909_dir: Path) -> None:
    proc = run_cli(["-m", "musicgen.tokenizer", "check", str(pop909_dir / "001.mid"), "--grid", "4000000"], tmp_path)
    assert "tokenizer.grid" in single_error_line(proc)


# --------------------------------------------------------------------------------------------------------- #
# (3) the studio obeys only its own page
# --------------------------------------------------------------------------------------------------------- #
def _studio_server(config):
    """(app, uvicorn server, thread, port) of the studio on a free port on 127.0.0.1."""
    from musicgen.studio import create_app

    app = create_app(config)
    return (app, *serve_studio(app))


def _http(port: int, method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None):
    """(status, headers, JSON or bytes) of one raw request: any Host, Origin or Cookie header as given."""
    import http.client
    import json

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        headers = {"Host": f"127.0.0.1:{port}", **(headers or {})}
        if body is not None:
            headers["Content-Length"] = str(len(body))
        for key, value in headers.items():
            if value is not None:
                conn.putheader(key, value)
        conn.endheaders(body)
        response = conn.getresponse()
        data = response.read()
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = data
        return response.status, response.headers, parsed
    finally:
        conn.close()


def _form(fields: dict[str, str], file: tuple[str, bytes] | None = None, close: bool = True) -> tuple[bytes, str]:
    boundary = "hostileboundary1234"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    if file is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"; filename="{file[0]}"\r\n'
                     "Content-Type: audio/midi\r\n\r\n".encode() + file[1] + b"\r\n")
    if close:
        parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


@pytest.fixture()
def guarded_studio(tiny_checkpoint: Path):
    pytest.importorskip("uvicorn")
    from musicgen.studio import StudioConfig

    app, server, thread, port = _studio_server(StudioConfig(checkpoint=str(tiny_checkpoint), device="cpu",
                                                            token="s3cret-token", workers=1))
    try:
        yield app, port
    finally:
        server.should_exit = True
        thread.join(60)


def test_hostile_studio_refuses_other_hosts_origins_and_missing_tokens(guarded_studio) -> None:
    """CSRF and DNS rebinding: a wrong Host, a wrong Origin or no token is refused and starts no job; the page's
    own way in (the printed URL sets a cookie, its requests carry it and its own Origin) still works."""
    app, port = guarded_studio
    manager = app.state.manager
    own = f"http://127.0.0.1:{port}"
    body, ctype = _form({"bars": "1", "seed": "1"})
    # no token at all: the page, the API and the files are refused; the static assets are public
    for method, path in (("GET", "/"), ("GET", "/api/info"), ("POST", "/api/jobs")):
        status, _, answer = _http(port, method, path, {"Content-Type": ctype} if method == "POST" else None,
                                  body if method == "POST" else None)
        assert status == 403 and "token" in answer["error"], (path, answer)
    assert _http(port, "GET", "/static/studio.js")[0] == 200
    # the printed URL: the page, and a cookie for the page's own requests
    status, headers, page = _http(port, "GET", "/?token=s3cret-token")
    assert status == 200 and b"musicgen studio" in page
    set_cookie = headers["set-cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    cookie = set_cookie.split(";")[0]
    assert _http(port, "GET", "/?token=wrong")[0] == 403
    # DNS rebinding: the right token (cookie) but the attacker's host name
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example"):
        status, _, answer = _http(port, "GET", "/api/info", {"Host": host, "Cookie": cookie})
        assert status == 403 and "Host" in answer["error"]
        status, _, _ = _http(port, "POST", "/api/jobs", {"Host": host, "Cookie": cookie, "Content-Type": ctype,
                                                         "Origin": f"http://{host}"}, body)
        assert status == 403
    # CSRF: a page on another origin posts the form (a no-cors form post carries its Origin, no cookie)
    for origin in ("http://evil.example", "null", f"http://localhost:{port + 1}"):
        status, _, answer = _http(port, "POST", "/api/jobs", {"Origin": origin, "Content-Type": ctype,
                                                              "Cookie": cookie}, body)
        assert status == 403, origin
    status, _, _ = _http(port, "POST", "/api/jobs", {"Origin": own, "Content-Type": ctype,
                                                     "Sec-Fetch-Site": "cross-site", "Cookie": cookie}, body)
    assert status == 403
    status, _, _ = _http(port, "POST", "/api/jobs", {"Origin": own, "Content-Type": ctype,
                                                     "Cookie": "musicgen-studio-1=nope"}, body)
    assert status == 403
    assert not manager._jobs, "no refused request started a job"
    # the page itself: its Origin and its cookie; localhost names are the same machine
    status, _, job = _http(port, "POST", "/api/jobs", {"Origin": own, "Content-Type": ctype, "Cookie": cookie,
                                                       "Sec-Fetch-Site": "same-origin"}, body)
    assert status == 202, job
    assert _http(port, "GET", "/api/info", {"Host": f"localhost:{port}", "Cookie": cookie})[0] == 200
    assert _http(port, "GET", "/api/info", {"Authorization": "token s3cret-token"})[0] == 200
    assert _http(port, "GET", f"/api/jobs/{job['id']}", {"Host": "evil.example", "Cookie": cookie})[0] == 403


def test_hostile_studio_prints_a_url_with_its_token(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import os
    import time
    import urllib.request

    pytest.importorskip("uvicorn")
    proc = subprocess.Popen([sys.executable, "-m", "musicgen.studio", "--port", "0", "--checkpoint",
                             str(tiny_checkpoint), "--device", "cpu"], cwd=tmp_path,
                            env=dict(env(), PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline()
        url = line.split()[2]
        assert "?token=" in url and len(url.split("?token=")[1]) >= 24, line
        base = url.split("?")[0]
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(url, timeout=30) as response:
                    assert response.status == 200 and "HttpOnly" in response.headers["Set-Cookie"]
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else ""
                time.sleep(0.2)
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(base + "api/info", timeout=30)
        assert info.value.code == 403
    finally:
        proc.terminate()
        proc.wait(60)
    assert os.path.isdir(tmp_path)


def test_hostile_guarded_studio_page_still_works_in_a_browser(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The page opened from the token URL: its GETs carry the cookie, its POST its own Origin (skips where
    headless Chromium is missing, as the studio's browser test does)."""
    pytest.importorskip("uvicorn")
    from studio_support import CHROMEDRIVER, chromium_or_skip

    webdriver, binary = chromium_or_skip()
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from musicgen.studio import StudioConfig

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--mute-audio"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    app, server, thread, port = _studio_server(StudioConfig(checkpoint=str(tiny_checkpoint), device="cpu",
                                                            token="browser-token", workers=1))
    not_midi = tmp_path / "notes.mid"
    not_midi.write_text("these are my notes, not MIDI")
    try:
        driver.get(f"http://127.0.0.1:{port}/?token=browser-token")
        wait = WebDriverWait(driver, 120)
        wait.until(lambda d: d.find_element(By.ID, "synth").text not in ("", "…"))
        driver.find_element(By.ID, "prompt").send_keys(str(not_midi))
        driver.find_element(By.ID, "generate").click()
        wait.until(ec.visibility_of_element_located((By.ID, "error")))
        assert "is not a MIDI file" in driver.find_element(By.ID, "error").text  # the POST reached the app
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(60)


# --------------------------------------------------------------------------------------------------------- #
# (4) tiny files that cost gigabytes
# --------------------------------------------------------------------------------------------------------- #
def _vlq(n: int) -> bytes:
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    return bytes(reversed(out))


def gap_bomb(n_notes: int = 40, gap: int = 0x0FFFFFFF, ticks_per_beat: int = 1) -> bytes:
    """A valid MIDI file of ~470 bytes: `n_notes` notes, each after the longest delta time MIDI allows, at one
    tick per beat: 2.7 billion bars of 4/4 of silence."""
    import struct

    track = b""
    for i in range(n_notes):
        track += _vlq(gap) + bytes([0x90, 60 + i % 12, 100]) + _vlq(1) + bytes([0x80, 60 + i % 12, 0])
    track += b"\x00\xff\x2f\x00"
    return (b"MThd" + struct.pack(">IHHH", 6, 0, 1, ticks_per_beat) + b"MTrk" + struct.pack(">I", len(track))
            + track)


def _limited(extra_mb: int):
    """A preexec_fn capping the child's address space at this interpreter's own plus `extra_mb`."""
    import resource

    limit = _address_space_limit(extra_mb)
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_hostile_gap_bomb_is_refused_in_one_line_within_bounded_memory(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.mid"
    bomb.write_bytes(gap_bomb())
    assert bomb.stat().st_size < 500
    proc = subprocess.run([sys.executable, "-m", "musicgen.tokenizer", "check", str(bomb)], env=env(),
                          capture_output=True, text=True, timeout=300, preexec_fn=_limited(512), cwd=tmp_path)
    assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"{bomb}: ") and "beyond the limit of 8,192" in lines[0], proc.stdout
    assert lines[-1] == "checked 1 files: 0 exact, 0 lossy, 1 unreadable"
    # the library says the same, naming the file; a prompt is refused the same way
    from musicgen.tokenizer import MidiReadError

    with pytest.raises(MidiReadError, match="whole notes .* beyond the limit") as info:
        REMITokenizer().encode(bomb)
    assert str(bomb) in str(info.value)
    from musicgen.generation.prompt import load_prompt

    with pytest.raises(UserError, match="beyond the limit"):
        load_prompt(bomb, REMITokenizer())


def test_hostile_gap_bomb_upload_is_refused_by_the_studio(tmp_path: Path) -> None:
    from musicgen.studio.upload import UploadError, check_midi

    with pytest.raises(UploadError, match="'bomb.mid': its last note starts .* beyond the limit") as info:
        check_midi(gap_bomb(), "bomb.mid")
    assert info.value.status == 400 and "\n" not in str(info.value)
    # just inside the limit is still a prompt (8,000 whole notes of 4/4 at 480 ticks per beat)
    assert check_midi(gap_bomb(n_notes=2, gap=4000 * 4 * 480, ticks_per_beat=480), "long.mid") == 2


def _slow_long_midi(path: Path, bars: int = 5000, bpm: float = 24.0) -> Path:
    import miditoolkit

    midi = miditoolkit.MidiFile(ticks_per_beat=480)
    midi.tempo_changes = [miditoolkit.TempoChange(bpm, 0)]
    piano = miditoolkit.Instrument(program=0)
    for bar in range(0, bars, 10):
        piano.notes.append(miditoolkit.Note(velocity=90, pitch=60 + bar % 12, start=bar * 1920,
                                            end=bar * 1920 + 480))
    midi.instruments = [piano]
    midi.dump(str(path))
    return path


_RENDER_SCRIPT = """
import sys, wave
from pathlib import Path
from musicgen.studio import audio
from musicgen.generation.render import render_wav
how = audio.render(sys.argv[1], sys.argv[2], audio.Synth(None, None))
_, note = render_wav(sys.argv[1], sys.argv[3])
for wav in sys.argv[2:4]:
    with wave.open(wav) as handle:
        print(handle.getnframes() / handle.getframerate())
print(how)
print(note)
"""


def test_hostile_wav_render_is_bounded_by_duration(tmp_path: Path) -> None:
    """5,000 bars at 24 BPM (50,000 s, a file of a few KB): both renderers write the first 15 minutes, in
    bounded memory, and say so."""
    song = _slow_long_midi(tmp_path / "slow.mid")
    assert song.stat().st_size < 50_000
    proc = subprocess.run([sys.executable, "-c", _RENDER_SCRIPT, str(song), str(tmp_path / "a.wav"),
                           str(tmp_path / "b.wav")], env=env(), capture_output=True, text=True, timeout=600,
                          preexec_fn=_limited(1024), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert 800 <= float(lines[0]) <= 905 and 800 <= float(lines[1]) <= 905, lines  # notes every 100 s
    assert "first 15 minutes only" in lines[2] and "first 15 minutes only" in lines[3]
    assert not list(tmp_path.glob(".*.render-*.mid"))


# --------------------------------------------------------------------------------------------------------- #
# (5) a full disk never leaves half a result file
# --------------------------------------------------------------------------------------------------------- #
_FULL_DISK_SCRIPT = """
import json, resource, signal, sys
from pathlib import Path
import torch
from musicgen.evaluation.report import write_json
from musicgen.evaluation.plots import save_figure
from musicgen.inference.checkpoint import atomic_torch_save
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
out = Path(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
for name, write in (
        ("nll.json", lambda p: write_json(p, {"nll": list(range(20000))})),
        ("nll_by_position.png", lambda p: save_figure(plt.subplots(figsize=(30, 30))[0], p, dpi=200)),
        ("last.pt", lambda p: atomic_torch_save({"w": torch.randn(100000)}, p))):
    try:
        write(out / name)
        print(name, "WROTE")
    except OSError as exc:
        print(name, "ERROR", exc)
"""


def test_hostile_full_disk_leaves_every_result_file_whole(tmp_path: Path) -> None:
    """evaluate's JSON and figures and the checkpoints: a write that fails half-way (RLIMIT_FSIZE stands for a
    full disk) leaves the previous file as it was, no temp file, and one error naming the file."""
    old = {"nll.json": b'{"old": true}', "nll_by_position.png": b"old png", "last.pt": b"old checkpoint"}
    for name, data in old.items():
        (tmp_path / name).write_bytes(data)
    proc = subprocess.run([sys.executable, "-c", _FULL_DISK_SCRIPT, str(tmp_path)], env=env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 3, proc.stdout
    for line, name in zip(lines, old):
        assert line.startswith(f"{name} ERROR") and f"while writing {tmp_path / name}" in line, line
        assert "enforce fail" not in line
    for name, data in old.items():
        assert (tmp_path / name).read_bytes() == data, name
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_hostile_evaluate_and_generate_write_through_the_atomic_writer() -> None:
    """No result file of evaluate (or of the pieces its drift part samples) is written in place."""
    import re

    for module in ("evaluation/report.py", "evaluation/plots.py", "evaluation/positional.py",
                   "evaluation/music_report.py", "evaluation/drift_report.py", "evaluation/likelihood_report.py",
                   "generation/api.py", "generation/pianoroll.py"):
        source = (REPO / "musicgen" / module).read_text()
        assert not re.search(r"\.write_text\(|\.write_bytes\(|\.savefig\(|\.dump\(str", source), module


# --------------------------------------------------------------------------------------------------------- #
# (6) unknown options on the command line: one line, and `+` adds nothing silently
# --------------------------------------------------------------------------------------------------------- #
@pytest.mark.parametrize("tool, override, key", [
    ("train", "+train.foo=1", "train.foo"), ("train", "+foo=1", "foo"), ("train", "++train.foo=1", "train.foo"),
    ("train", "train.foo=1", "train.foo"), ("train", "foo=1", "foo"), ("train", "model.attention.fo=1",
                                                                         "model.attention.fo"),
    ("generate", "temprature=1", "temprature"), ("generate", "+foo=1", "foo"), ("evaluate", "+data.foo=1",
                                                                                 "data.foo"),
    ("train", "train.max_steps=[", "train.max_steps=["),
])
def test_hostile_unknown_or_added_keys_are_one_error_line(tool: str, override: str, key: str, tmp_path: Path) -> None:
    proc = run_cli([str(REPO / f"{tool}.py"), override, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    line = single_error_line(proc)
    assert override in line and key in line, line
    assert not (tmp_path / "run").exists() and not (tmp_path / "outputs").exists()


def test_hostile_override_check_keeps_what_hydra_accepts() -> None:
    from musicgen.config import check_overrides

    check_overrides("config", ["model=none", "++model.attention.decay=learned", "train.max_steps=5",
                               "hydra.run.dir=/tmp/x", "+hydra.job.env_set.A=1"])
    check_overrides("config", ["--cfg", "job", "+anything=1"])  # Hydra's own flags: left to Hydra
    check_overrides("generate", ["seed=3", "chords='Am F C G'"])
    with pytest.raises(UserError, match=r"^\+train.foo=1: there is no option train.foo"):
        check_overrides("config", ["+train.foo=1"])


# --------------------------------------------------------------------------------------------------------- #
# (7) index.tsv metres; evaluate never writes in a checkpoint's cache folder
# --------------------------------------------------------------------------------------------------------- #
def _pop_corpus(dest: Path, pop909_dir: Path, ids=(1, 2, 3, 5)) -> Path:
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    for i in ids:
        shutil.copy(pop909_dir / f"{i:03d}.mid", dest / f"{i:03d}.mid")
    shutil.copy(pop909_dir / "index.tsv", dest / "index.tsv")
    return dest


def _data_cfg(root: Path, cache: Path) -> dict:
    return {"name": "pop909", "root": str(root), "download": False, "time_signature": "index", "split": "pop909",
            "cache_dir": str(cache), "num_workers": 1, "max_files": None, "augment": {"transpose": 0}}


@pytest.mark.parametrize("beats", ["0", "x", "-3", ""])
def test_hostile_bad_metre_in_index_tsv_names_file_and_row(beats: str, tmp_path: Path, pop909_dir: Path) -> None:
    from musicgen.data.sources import list_sources

    root = _pop_corpus(tmp_path / "pop", pop909_dir)
    lines = (root / "index.tsv").read_text(encoding="utf-8").splitlines()
    col = lines[0].split("\t").index("num_beats_per_measure")
    cells = lines[3].split("\t")  # song 003, line 4 of the file
    cells[col] = beats
    lines[3] = "\t".join(cells)
    (root / "index.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError) as info:
        list_sources(_data_cfg(root, tmp_path / "cache"))
    message = str(info.value)
    assert f"{root / 'index.tsv'}, line 4 (song 003)" in message and "num_beats_per_measure" in message, message
    assert "\n" not in message and "invalid literal" not in message


def test_hostile_reading_a_checkpoints_cache_writes_nothing_there(tmp_path: Path, pop909_dir: Path) -> None:
    """A cache without a lock file (copied, or shipped read-only): evaluate's reading it creates none."""
    from musicgen.data import TokenCache, prepare_corpus
    from musicgen.evaluation.eval_cache import open_eval_cache

    root = _pop_corpus(tmp_path / "pop", pop909_dir)
    cache_dir = tmp_path / "cache"
    prepare_corpus(_data_cfg(root, cache_dir), {}, progress=False)
    (cache_dir / ".lock").unlink()
    before = sorted(p.name for p in cache_dir.iterdir())
    cache = open_eval_cache({"data": _data_cfg(root, cache_dir)}, REMITokenizer().vocab, progress=False)
    assert Path(cache.dir).resolve() == cache_dir.resolve()
    TokenCache(cache_dir)
    assert sorted(p.name for p in cache_dir.iterdir()) == before


# --------------------------------------------------------------------------------------------------------- #
# (8) prepare: a dead worker, an undecodable name, an unreadable file
# --------------------------------------------------------------------------------------------------------- #
_DEAD_WORKER_SCRIPT = """
import json, os, signal, sys
from musicgen.tokenizer import REMITokenizer
from musicgen.data import prepare_corpus
real = REMITokenizer.encode
def encode(self, path, *args, **kwargs):  # the worker tokenizing killer.mid dies as under the OOM killer
    if str(path).endswith("killer.mid"):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, path, *args, **kwargs)
REMITokenizer.encode = encode
cache = prepare_corpus(json.loads(sys.argv[1]), {}, progress=False)
print(json.dumps({"songs": sorted(s.relpath for s in cache.songs), "bad": cache.manifest["bad_files"]}))
"""


def _folder_cfg(root: Path, cache: Path, workers: int = 2) -> dict:
    return {"name": "midi_folder", "root": str(root), "download": False, "time_signature": "file", "split": "hash",
            "cache_dir": str(cache), "num_workers": workers, "max_files": None, "augment": {"transpose": 0}}


def test_hostile_fault_prepare_survives_a_dead_worker(tmp_path: Path, pop909_dir: Path) -> None:
    """The pool's worker dies (SIGKILL) on one file: prepare finishes, that file is reported, the rest cached
    (multiprocessing.Pool respawned the worker and waited forever)."""
    import json
    import shutil

    root = tmp_path / "midi"
    root.mkdir()
    for i, name in ((1, "a.mid"), (2, "b.mid"), (3, "killer.mid"), (5, "c.mid"), (6, "d.mid")):
        shutil.copy(pop909_dir / f"{i:03d}.mid", root / name)
    proc = subprocess.run([sys.executable, "-c", _DEAD_WORKER_SCRIPT, json.dumps(_folder_cfg(root, tmp_path / "c"))],
                          env=env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["songs"] == ["a.mid", "b.mid", "c.mid", "d.mid"]
    assert [(b["path"], b["key"]) for b in result["bad"]] == [("killer.mid", "")]
    assert "died" in result["bad"][0]["reason"]


def test_hostile_fault_undecodable_name_and_unreadable_file_are_skipped(tmp_path: Path, pop909_dir: Path,
                                                                         monkeypatch) -> None:
    import os
    import shutil

    import musicgen.data.prepare as prepare
    from musicgen.data.prepare import current_cache

    root = tmp_path / "midi"
    root.mkdir()
    shutil.copy(pop909_dir / "005.mid", root / "good.mid")
    shutil.copy(pop909_dir / "001.mid", root / "locked.mid")
    shutil.copy(pop909_dir / "002.mid", os.fsdecode(os.fsencode(str(root)) + b"/bad\xff\xfe.mid"))
    real_sha1 = prepare.file_sha1

    def sha1(path: Path) -> str:  # root reads any file: an unreadable one is simulated
        if path.name == "locked.mid":
            raise PermissionError(13, "Permission denied", str(path))
        return real_sha1(path)

    monkeypatch.setattr(prepare, "file_sha1", sha1)
    cfg = _folder_cfg(root, tmp_path / "cache", workers=1)
    cache = prepare.prepare_corpus(cfg, {}, progress=True)
    assert [s.relpath for s in cache.songs] == ["good.mid"]
    reasons = {b["path"]: b["reason"] for b in cache.manifest["bad_files"]}
    assert reasons == {"bad\\xff\\xfe.mid": "its file name is not valid UTF-8 (rename the file)",
                       "locked.mid": "cannot read the file (Permission denied)"}
    log = (tmp_path / "cache" / "bad_files.log").read_text(encoding="utf-8")
    assert "bad\\xff\\xfe.mid" in log and "locked.mid" in log
    assert current_cache(cfg, {}) is None  # the unreadable file cannot be checked: never taken as up to date
    monkeypatch.setattr(prepare, "file_sha1", real_sha1)
    again = prepare.prepare_corpus(cfg, {}, progress=False)
    assert sorted(s.relpath for s in again.songs) == ["good.mid", "locked.mid"]
    assert current_cache(cfg, {}) is not None


# --------------------------------------------------------------------------------------------------------- #
# (9) seed=-1
# --------------------------------------------------------------------------------------------------------- #
def test_hostile_negative_seed_is_refused_up_front(tiny_checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    import musicgen.generation.api as api
    from musicgen.studio.params import build_options

    def never(*_args, **_kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(api, "load_model", never)
    with pytest.raises(UserError, match=r"^seed must be an integer >= 0 or null, got -1"):
        GenerateOptions(seed=-1)
    with pytest.raises(UserError, match="^seed must be"):
        api.generate(tiny_checkpoint, seed=-1, progress=False, log=None)
    with pytest.raises(UserError, match="^seed must be an integer >= 0"):
        EvaluateOptions(seed=-1)
    with pytest.raises(UserError, match="^seed must be"):  # the studio's form: a 400 at Generate, not a failed job
        build_options({"seed": "-1"}, None, str(tiny_checkpoint), "cpu")
    assert GenerateOptions(seed=0).seed == 0 and GenerateOptions(seed=2**40).seed == 2**40
    for tool in ("generate", "evaluate", "train"):
        proc = run_cli([str(REPO / f"{tool}.py"), f"checkpoint={tiny_checkpoint}", "seed=-1",
                        f"hydra.run.dir={tmp_path / 'run'}"] if tool != "train" else
                       [str(REPO / "train.py"), "seed=-1", f"hydra.run.dir={tmp_path / 'run'}", "logger=none"],
                       tmp_path)
        assert single_error_line(proc).startswith("error: seed must be an integer"), tool


# --------------------------------------------------------------------------------------------------------- #
# (10) loose ends: the studio
# --------------------------------------------------------------------------------------------------------- #
def _midi_bytes(notes: list[tuple[int, int]], ticks_per_beat: int = 480) -> bytes:
    """A MIDI file of (start tick, pitch) quarter notes."""
    import io

    import miditoolkit

    midi = miditoolkit.MidiFile(ticks_per_beat=ticks_per_beat)
    piano = miditoolkit.Instrument(program=0)
    piano.notes = [miditoolkit.Note(velocity=90, pitch=p, start=t, end=t + ticks_per_beat) for t, p in notes]
    midi.instruments = [piano]
    buffer = io.BytesIO()
    midi.dump(file=buffer)
    return buffer.getvalue()


def _wait_job(port: int, job_id: str, headers: dict[str, str], timeout: float = 300) -> dict:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        status, _, job = _http(port, "GET", f"/api/jobs/{job_id}", headers)
        assert status == 200, job
        if job["status"] in ("done", "error"):
            return job
        time.sleep(0.2)
    raise AssertionError("job not finished")


def test_hostile_studio_loose_ends_over_http(guarded_studio) -> None:
    """A multipart body cut before its closing boundary is refused (it ran with defaults); a prompt longer
    than the studio writes is refused at upload (it failed after generating); a job's error names the
    uploaded file, never a server path."""
    app, port = guarded_studio
    auth = {"Authorization": "token s3cret-token"}
    body, ctype = _form({"bars": "1", "seed": "1", "temperature": "0.5"}, close=False)
    status, _, answer = _http(port, "POST", "/api/jobs", {**auth, "Content-Type": ctype}, body)
    assert status == 400 and "incomplete" in answer["error"] and not app.state.manager._jobs
    long_prompt = _midi_bytes([(0, 60), (3000 * 1920, 62)])
    assert len(long_prompt) < 100
    body, ctype = _form({"bars": "1"}, ("long.mid", long_prompt))
    status, _, answer = _http(port, "POST", "/api/jobs", {**auth, "Content-Type": ctype}, body)
    assert status == 400 and "'long.mid'" in answer["error"] and "up to 2,048" in answer["error"], answer
    late = _midi_bytes([(3 * 1920, 60), (3 * 1920 + 480, 64)])  # its first note in bar 4
    body, ctype = _form({"bars": "1", "prompt_bars": "1", "prompt_time_signature": "4/4"}, ("mine.mid", late))
    status, _, answer = _http(port, "POST", "/api/jobs", {**auth, "Content-Type": ctype}, body)
    assert status == 202, answer
    job = _wait_job(port, answer["id"], auth)
    assert job["status"] == "error" and "'mine.mid'" in job["error"], job
    assert "/tmp" not in job["error"] and "prompt.mid" not in job["error"] and "musicgen-studio" not in job["error"]


def test_hostile_studio_refuses_a_damaged_checkpoint_at_start(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    from musicgen.studio.__main__ import main

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    poisoned = _crafted(tiny_checkpoint, tmp_path / "nan.pt",
                        model_state=lambda s: {**s, "embed.weight": s["embed.weight"] * float("nan")})
    for bad in (truncated, poisoned):
        assert main(["--checkpoint", str(bad), "--port", "0", "--device", "cpu"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: checkpoint {bad}") and "\n" not in err, err


def test_hostile_studio_cleans_job_folders_of_killed_studios(tmp_path: Path, tiny_checkpoint: Path,
                                                              monkeypatch) -> None:
    import os
    import tempfile

    from musicgen.studio import StudioConfig, create_app

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f"musicgen-studio-{dead_pid}-abc123"
    (stale / "out").mkdir(parents=True)
    (stale / "prompt.mid").write_bytes(b"MThd")
    live = tmp_path / f"musicgen-studio-{os.getppid()}-def456"  # a studio that still runs
    live.mkdir()
    other = tmp_path / "musicgen-studio-notapid"
    other.mkdir()
    create_app(StudioConfig(checkpoint=str(tiny_checkpoint), device="cpu"))
    assert not stale.exists() and live.exists() and other.exists()


# --------------------------------------------------------------------------------------------------------- #
# (10) loose ends: signals while preparing, a read-only run folder
# --------------------------------------------------------------------------------------------------------- #
def _prepare_until_tokenizing(tmp_path: Path, pop909_dir: Path):
    """`python -m musicgen.data.prepare` on POP909 with 2 workers, in its own session, once it is tokenizing:
    (process, the stderr read so far)."""
    import os
    import time

    import signal

    def as_in_a_terminal() -> None:  # a test runner started in the background (`cmd &`) ignores SIGINT, and a
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # child inherits that: Python then never sees Ctrl-C

    proc = subprocess.Popen([sys.executable, "-m", "musicgen.data.prepare", f"data.root={pop909_dir}",
                             f"data.cache_dir={tmp_path / 'cache'}", "data.num_workers=2"], cwd=tmp_path, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=as_in_a_terminal)
    os.set_blocking(proc.stderr.fileno(), False)
    seen, deadline = b"", time.time() + 120
    while b"tokenize" not in seen:
        assert proc.poll() is None and time.time() < deadline, seen[-2000:]
        seen += proc.stderr.read() or b""
        time.sleep(0.1)
    time.sleep(1.0)
    return proc, seen


def _children_of(pid: int) -> list[int]:
    from pathlib import Path as P

    found = []
    for stat in P("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_hostile_fault_ctrl_c_while_preparing_is_one_line(tmp_path: Path, pop909_dir: Path) -> None:
    import os
    import signal

    proc, seen = _prepare_until_tokenizing(tmp_path, pop909_dir)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
    _, err = proc.communicate(timeout=120)
    err = (seen + err).decode(errors="replace")
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "tokenize" not in line
             and "<frozen runpy>" not in line]  # python -m's warning about musicgen.data importing prepare
    assert lines == ["interrupted (Ctrl-C)"], lines


def test_hostile_fault_sigterm_while_preparing_leaves_no_worker(tmp_path: Path, pop909_dir: Path) -> None:
    """The parent ended by SIGTERM (or SIGKILL): its pool workers end with it instead of waiting forever."""
    import os
    import signal
    import time

    proc, _ = _prepare_until_tokenizing(tmp_path, pop909_dir)
    workers = _children_of(proc.pid)
    assert workers, "the pool has workers"
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    assert proc.returncode == -signal.SIGTERM
    deadline = time.time() + 30
    while any(os.path.exists(f"/proc/{pid}") and "Z" not in open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1][:3]
              for pid in workers):
        assert time.time() < deadline, "orphaned pool workers still run"
        time.sleep(0.2)
    proc.stderr.close()
    proc.stdout.close()


def test_hostile_fault_unwritable_run_folder_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("in the way")
    proc = run_cli([str(REPO / "train.py"), "logger=none", f"hydra.run.dir={tmp_path / 'file' / 'run'}"], tmp_path)
    assert single_error_line(proc).startswith(f"error: hydra.run.dir={tmp_path / 'file' / 'run'}: not a folder")


def test_hostile_fault_full_disk_while_saving_a_checkpoint_is_one_line(tmp_path: Path, pop909_dir: Path) -> None:
    """A save that fails half-way (RLIMIT_FSIZE for a full disk) is one line naming the file, not torch's
    `[enforce fail at inline_container.cc:672]`, and no half checkpoint or temp file is left."""
    from musicgen.data import prepare_corpus

    root = _pop_corpus(tmp_path / "pop", pop909_dir)
    prepare_corpus(_data_cfg(root, tmp_path / "cache"), {}, progress=False)
    script = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
              "resource.setrlimit(resource.RLIMIT_FSIZE, (200000, 200000)); sys.argv = sys.argv[1:]; "
              "runpy.run_path(sys.argv[0], run_name='__main__')")
    ckpt = tmp_path / "ckpt"
    proc = run_cli(["-c", script, str(REPO / "train.py"), f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}",
                    "data.num_workers=1", "model.n_layers=2", "model.d_model=64", "model.n_heads=2",
                    "model.d_ff=128", "train.seq_len=32", "train.batch_size=2", "train.max_steps=2",
                    "train.val_every=100", "train.ckpt_every=1", "train.warmup_steps=1", "logger=none",
                    "device=cpu", f"train.ckpt_dir={ckpt}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [part for line in proc.stderr.replace("\r", "\n").splitlines() for part in line.split("error: ")[1:]]
    assert len(lines) == 1, proc.stderr[-3000:]  # one error (the progress bar of the steps aside)
    line = lines[0]
    assert "File too large while writing" in line and str(ckpt) in line and "enforce fail" not in line, line
    assert not list(ckpt.glob("*.pt")) and not list(ckpt.glob(".*.tmp-*"))
