"""benchmarks/extrapolation.py (issue "A model that listens"): bucket edges, song streams, and the whole script
end to end at a tiny size (two variants, 2 training steps, real POP909 files), plus its resume."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks import extrapolation

REPO = Path(__file__).resolve().parents[1]


def test_stream_edges_follow_the_issue():
    L = 512
    assert extrapolation.stream_edges(L, 40) == [(0, L), (L // 2, L), (4 * L, 8 * L), (8 * L, 16 * L), (16 * L, 40 * L)]
    assert extrapolation.stream_edges(32, 4) == [(0, 32), (16, 32), (64, 128)]  # short streams: [F/2 L, F L)
    assert extrapolation.stream_edges(32, 2)[-1] == (32, 64)


def test_streams_join_songs_without_inner_bos_or_eos():
    bos, eos = 1, 2
    songs = [SimpleNamespace(offset=0, length=5), SimpleNamespace(offset=5, length=4), SimpleNamespace(offset=9, length=6)]
    tokens = np.array([bos, 10, 11, 12, eos, bos, 20, 21, eos, bos, 30, 31, 32, 33, eos])
    cache = SimpleNamespace(vocab=SimpleNamespace(bos_id=bos, eos_id=eos), split=lambda name: songs,
                            song_tokens=lambda s: tokens[s.offset:s.offset + s.length])
    streams, used = extrapolation.build_streams(cache, 5, 0)
    assert [s.tolist() for s in streams] == [[bos, 10, 11, 12, 20, 21]]  # 6 = length + 1 tokens
    assert used == [2]  # the third song starts a stream of its own, too short for one


def test_variant_overrides():
    assert extrapolation.variant_overrides("decay")[0] == "model=none"
    assert extrapolation.variant_overrides("softmax") == ["model=softmax"]  # any conf/model preset
    with pytest.raises(SystemExit):
        extrapolation.variant_overrides("no_such_variant")


def test_script_end_to_end(pop909_dir, tmp_path):
    """Train ape and decay for 2 steps, run every measurement, check the JSON holds real numbers; then rerun and
    check nothing is retrained or remeasured. ~90 s on a busy 2-core CPU."""
    results = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "benchmarks.extrapolation", "--steps", "2", "--seq-len", "32",
           "--length-factor", "2", "--stream-factor", "4", "--variants", "ape,decay", "--max-files", "30",
           "--gen-tokens", "200", "--gen-seeds", "1", "--prompts", "1", "--model-overrides",
           "model.n_layers=1 model.d_model=32 model.n_heads=2 model.d_ff=64", "--device", "cpu",
           "--data-root", str(pop909_dir), "--runs-dir", str(tmp_path / "runs"), "--docs-dir", str(tmp_path / "docs"),
           "--results", str(results)]
    env = dict(os.environ, WANDB_MODE="disabled", WANDB_SILENT="true", OMP_NUM_THREADS="1",
               MUSICGEN_SHARED_DATA=str(pop909_dir.parent),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "budget: 2 steps x 8 crops x L=32 = 512 training tokens" in proc.stdout

    payload = json.loads(results.read_text())
    assert payload["train_tokens"] == 512 and payload["seq_len"] == 32
    assert payload["variants"]["decay"] == ["model=none", "++model.attention.decay=learned"]
    assert set(payload["results"]) == {"ape", "decay"}
    vocab = json.loads((tmp_path / "runs" / "ape" / "vocab.json").read_text())["size"]
    ceiling = math.log(vocab) + 1
    for name, r in payload["results"].items():
        assert r["step"] == 2
        assert list(r["nll_by_position"]) == ["[0,32)", "[16,32)", "[32,64)"]
        assert all(math.isfinite(v) and 0 < v < ceiling for v in r["nll_by_position"].values()), (name, r)
        s = r["streams"]
        assert s["streams"] >= 1 and s["length"] == 128
        assert list(s["buckets"]) == ["[0,32)", "[16,32)", "[64,128)"]
        assert all(math.isfinite(v) and 0 < v < ceiling for v in s["buckets"].values())
        assert math.isfinite(s["ratio_last_over_ref"])
        assert r["attention_share"]["songs"] >= 1 and 0 < r["attention_share"]["share_mean"] <= 1
        assert 0 < r["attention_share"]["uniform_share"] <= 1
        assert "parameters" in r["movement"]
        piece = r["generation"]["1"]
        assert piece["tokens"] >= 150 and piece["bars_4_beats"] >= 0
        assert set(piece["summary"]) == set(extrapolation.GEN_KEYS) and "all_inside" in piece["range_check"]
        assert isinstance(piece["guards_acted"], dict) and 0 <= piece["windows_outside"] <= piece["windows"]
        c = r["continuation"]
        assert c["songs"] == 1 and c["samples"] == 2 and set(c["generated"]) == set(c["song_itself"])
    assert any(k.endswith("decay.log_tau") for k in payload["results"]["decay"]["movement"]["parameters"])

    md = (tmp_path / "docs" / "extrapolation.md").read_text()
    for heading in ("NLL by position on single test songs", "streams of concatenated test songs",
                    "Attention share", "movement from init", "Free generation", "Continuation fidelity"):
        assert heading in md
    assert "512 training tokens" in md
    assert (tmp_path / "docs" / "extrapolation.png").stat().st_size > 0
    assert (tmp_path / "docs" / "extrapolation_streams.png").stat().st_size > 0

    again = subprocess.run(cmd + ["--skip-continuation"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("already trained (2 steps)") == 2
    assert "training:" not in again.stdout
    assert again.stdout.count("stored by an earlier run") == 2 * 5  # nll, streams, share, movement, generation
    assert json.loads(results.read_text())["results"]["ape"]["nll_by_position"] == payload["results"]["ape"][
        "nll_by_position"]
