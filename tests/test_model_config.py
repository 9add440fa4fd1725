"""Config files, build_model / model.config round trip, backends, autocast, performer redraws."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from musicgen.model import FastTransformersMissing, build_model, model_config_from
from musicgen.model.causal_linear import causal_linear_attention
from test_model_parity import VOCAB, small_cfg

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
NAMES = ["spe_sine_gated_decay", "spe_sine_gated", "spe_conv_gated", "spe_sine", "spe_conv", "ape", "softmax", "none", "paper_pop_piano"]
SMALL = [n for n in NAMES if n != "paper_pop_piano"]
HAS_FAST = importlib.util.find_spec("fast_transformers") is not None


@pytest.mark.parametrize("name", NAMES)
def test_conf_files_resolve(name: str) -> None:
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    resolved = model_config_from(cfg, 100)
    assert resolved["name"] == name and resolved["vocab_size"] == 100
    json.dumps(resolved)
    # every key of the file is a known key, and every known key is written in the file
    assert set(OmegaConf.to_container(cfg)) == set(resolved) - {"vocab_size"}


def test_small_presets_have_the_same_size() -> None:
    sizes = set()
    for name in SMALL:
        cfg = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))
        sizes.add((cfg["n_layers"], cfg["d_model"], cfg["n_heads"], cfg["d_ff"]))
    assert len(sizes) == 1


def test_default_preset_builds_and_rebuilds_from_its_config() -> None:
    model = build_model(OmegaConf.load(CONF / "spe_sine_gated.yaml"), 300)
    cfg = json.loads(json.dumps(model.config))
    clone = build_model(cfg, cfg["vocab_size"])
    clone.load_state_dict(model.state_dict())
    x = torch.randint(1, 300, (1, 20))
    model.eval(), clone.eval()
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(model(x, generator=g()), clone(x, generator=g()))


def test_paper_preset_shape() -> None:
    cfg = model_config_from(OmegaConf.load(CONF / "paper_pop_piano.yaml"), 300)
    assert (cfg["n_layers"], cfg["d_model"], cfg["n_heads"], cfg["d_ff"]) == (24, 512, 8, 2048)
    assert cfg["attention"]["n_features"] == 128 and cfg["pe"]["realizations"] == 64 and cfg["pe"]["sines"] == 5
    assert cfg["pe"]["share"] and cfg["pe"]["gated"] and cfg["pe"]["kind"] == "spe_sine"


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ValueError):
        model_config_from({"pe": {"kind": "rope"}}, 10)
    with pytest.raises(KeyError):
        model_config_from({"attention": {"kernel": 3}}, 10)
    with pytest.raises(ValueError, match="chunk_size"):
        model_config_from({"attention": {"chunk_size": "big"}}, 10)


def test_chunk_size_auto_resolves_per_device() -> None:
    from musicgen.model.causal_linear import resolve_chunk_size

    assert model_config_from({}, 10)["attention"]["chunk_size"] == "auto"
    assert resolve_chunk_size("auto", torch.device("cpu")) == 64
    assert resolve_chunk_size("auto", torch.device("cuda")) == 256
    assert resolve_chunk_size(16, torch.device("cuda")) == 16


@pytest.mark.skipif(HAS_FAST, reason="pytorch-fast-transformers is installed")
def test_fast_transformers_backend_missing_gives_clear_error() -> None:
    with pytest.raises(FastTransformersMissing, match=r"pip install \.\[fast\]"):
        build_model(small_cfg(attention__backend="fast_transformers"), VOCAB)
    q = torch.rand(1, 1, 4, 2)
    with pytest.raises(ImportError, match="fast"):
        causal_linear_attention(q, q, q, backend="fast_transformers")


@pytest.mark.skipif(not HAS_FAST, reason="pytorch-fast-transformers not installed (`pip install .[fast]`)")
def test_fast_transformers_backend_parity() -> None:  # pragma: no cover - needs the optional package
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.rand(2, 2, 50, 8, generator=g) for _ in range(3))
    a = causal_linear_attention(q, k, v, chunk_size=16, backend="torch")
    b = causal_linear_attention(q, k, v, backend="fast_transformers")
    assert (a - b).abs().max() < 1e-4


@pytest.mark.parametrize("name", ["spe_sine_gated", "spe_conv_gated", "softmax"])
def test_bf16_autocast_forward_cpu(name: str) -> None:
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))
    cfg.update(n_layers=2, d_model=64, n_heads=2, d_ff=128)
    model = build_model(cfg, VOCAB).eval()
    x = torch.randint(1, VOCAB, (2, 80))
    with torch.no_grad():
        ref = model(x, generator=torch.Generator().manual_seed(0))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all()
    assert ((out.float() - ref).norm() / ref.norm()).item() < 0.1


def test_performer_redraw_probability() -> None:
    x = torch.randint(1, VOCAB, (1, 10))
    for prob, changes in ((0.0, False), (1.0, True)):
        model = build_model(small_cfg(attention__redraw_prob=prob), VOCAB).train()
        before = model.blocks[0].attn.feature_map.features.clone()
        model(x)
        after = model.blocks[0].attn.feature_map.features
        assert (not torch.equal(before, after)) == changes
    # eval: no generator -> the stored draw; a generator -> a per-sequence draw (not stored)
    model.eval()
    fmap = model.blocks[0].attn.feature_map
    assert fmap.sample(None, torch.device("cpu"), training=False) is fmap.features
    drawn = fmap.sample(torch.Generator().manual_seed(0), torch.device("cpu"), training=False)
    assert not torch.equal(drawn, fmap.features)
    assert torch.equal(drawn, fmap.sample(torch.Generator().manual_seed(0), torch.device("cpu"), training=False))


def test_forward_backward_default_small_batch() -> None:
    model = build_model(small_cfg(), VOCAB).train()
    x = torch.randint(0, VOCAB, (3, 50))
    logits = model(x)
    assert logits.shape == (3, 50, VOCAB) and logits.dtype == torch.float32
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), x.flatten(), ignore_index=0).backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and "embed" not in n)
