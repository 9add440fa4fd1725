"""Config files, build_model / model.config round trip, backends, autocast, performer redraws."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from musicgen.model import FastTransformersMissing, ModelConfig, build_model, load_preset, model_config_from
from musicgen.model.ops.linear_attention import causal_linear_attention
from support import VOCAB, small_cfg

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf" / "model"
NAMES = ["spe_sine_gated_decay_recall", "spe_sine_gated_decay", "spe_sine_gated", "spe_conv_gated", "spe_sine", "spe_conv", "ape", "ape_learned", "softmax", "none", "paper_pop_piano"]
SMALL = [n for n in NAMES if n != "paper_pop_piano"]
HAS_FAST = importlib.util.find_spec("fast_transformers") is not None


RECORDED = json.loads((ROOT / "tests" / "model_presets_resolved.json").read_text())


@pytest.mark.parametrize("name", NAMES)
def test_conf_files_resolve(name: str) -> None:
    cfg = load_preset(name)
    resolved = model_config_from(cfg, 100)
    assert resolved["name"] == name and resolved["vocab_size"] == 100
    json.dumps(resolved)
    # the composed preset writes every known key out (checkpoints and config.yaml record them all)
    assert json.dumps(cfg) == json.dumps({k: v for k, v in resolved.items() if k != "vocab_size"})


def test_presets_compose_to_the_recorded_values() -> None:
    """`python train.py model=<preset>` (Hydra, through conf/config.yaml) gives, for every preset, exactly the
    values (and key order) of the full copies the presets were before they became differences from _base.yaml;
    load_preset composes them the same way."""
    from hydra import compose, initialize_config_dir

    from musicgen.config import CONF_DIR

    presets = RECORDED["presets"]
    assert sorted(presets) == sorted(p.stem for p in CONF.glob("*.yaml") if not p.stem.startswith("_"))
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        default = OmegaConf.to_container(compose("config").model, resolve=True)
        assert json.dumps(default) == json.dumps(presets[RECORDED["default"]])
        for name, want in presets.items():
            got = OmegaConf.to_container(compose("config", overrides=[f"model={name}"]).model, resolve=True)
            assert json.dumps(got) == json.dumps(want), name
            assert json.dumps(load_preset(name)) == json.dumps(want), name
            assert model_config_from(got, 637) == {**want, "vocab_size": 637}
        over = compose("config", overrides=["model=ape", "model.attention.decay=learned", "model.d_model=64"]).model
        assert (over.name, over.d_model, over.attention.decay, over.pe.kind) == ("ape", 64, "learned", "ape")


@pytest.mark.parametrize("name", NAMES)
def test_presets_are_differences_from_base(name: str) -> None:
    """Each preset file starts from _base.yaml and lists only keys whose value differs from it."""
    raw = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))
    assert raw.pop("defaults") == ["_base", "_self_"]
    base = OmegaConf.to_container(OmegaConf.load(CONF / "_base.yaml"))

    def same(over: dict, ref: dict, path: str = "") -> list[str]:
        out = []
        for key, val in over.items():
            if isinstance(val, dict):
                out += same(val, ref[key], f"{path}{key}.")
            elif key != "name" and ref[key] == val:
                out.append(path + key)
        return out

    assert same(raw, base) == []


def test_base_preset_agrees_with_the_code_defaults() -> None:
    """conf/model/_base.yaml and ModelConfig's defaults hold the same values, except the two documented
    differences: presets untie the output layer (a config written in code ties it), and each preset names itself."""
    base = OmegaConf.to_container(OmegaConf.load(CONF / "_base.yaml"))
    defaults = ModelConfig().to_dict()
    assert base.pop("name") == "???" and defaults.pop("name") == "custom"
    assert base.pop("tie_embeddings") is False and defaults.pop("tie_embeddings") is True
    assert defaults.pop("vocab_size") is None
    assert json.dumps(base) == json.dumps(defaults)


def test_typed_config_is_validated_once_at_the_edge() -> None:
    cfg = ModelConfig.from_mapping(OmegaConf.create({"model": {"n_layers": 2.0, "dropout": 0, "attention": {"decay_tau_min": 4}}}), 10)
    assert (cfg.n_layers, cfg.dropout, cfg.attention.decay_tau_min, cfg.vocab_size) == (2, 0.0, 4.0, 10)
    assert type(cfg.n_layers) is int and type(cfg.dropout) is float and cfg.head_dim == 64
    assert ModelConfig.from_mapping(cfg.to_dict()) == cfg  # the stored dict round-trips
    model = build_model(cfg, 10)
    assert model.cfg == cfg and model.config == cfg.to_dict()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n_layers = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="model.n_layers must be an integer"):
        ModelConfig.from_mapping({"n_layers": 2.5})
    assert ModelConfig.from_mapping({"pe": {"gated": "no"}}).pe.gated is False  # yes/no words as everywhere
    with pytest.raises(ValueError, match="model.pe.gated must be true or false"):
        ModelConfig.from_mapping({"pe": {"gated": "maybe"}})
    with pytest.raises(ValueError, match="model.pe: expected a group"):
        ModelConfig.from_mapping({"pe": 3})


def shipped_logits(path: Path) -> dict:
    """What tests/model_shipped_logits.json records of a checkpoint: its config and parameter names, and its
    log-probabilities (the stack and the recall head together) on one random sequence in both forms, the
    parallel pass and the recurrent step. `python tests/test_model_config.py` rewrites the file from the shipped
    checkpoint (only when a new model is shipped)."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    config = json.loads(json.dumps(data["model_config"]))
    model = build_model(config, config["vocab_size"])
    model.load_state_dict({k: v.float() for k, v in data["model_state"].items()})
    model.eval()
    x = torch.randint(1, config["vocab_size"], (1, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        forward = model(x, generator=torch.Generator().manual_seed(1))
        state = model.init_state(1, generator=torch.Generator().manual_seed(1))
        steps = torch.stack([model.step(x[:, i], state)[0] for i in range(64)])
    return {"model_config": config, "state_keys": list(model.state_dict()),
            "forward": forward[0, ::8, :6].tolist(), "step": steps[[0, 31, 63], 0, :6].tolist(),
            "forward_sum": forward.double().sum().item(), "step_sum": steps.double().sum().item()}


def test_shipped_checkpoint_loads_with_the_same_names_config_and_logits() -> None:
    """checkpoints/musicgen-small.pt computes exactly what was recorded when it was shipped
    (tests/model_shipped_logits.json): the same config, parameter names and log-probabilities in both forms, so a
    refactoring that changes what the shipped model computes fails here."""
    path = ROOT / "checkpoints" / "musicgen-small.pt"
    if not path.is_file():
        pytest.skip("no shipped checkpoint")
    ref = json.loads((ROOT / "tests" / "model_shipped_logits.json").read_text())
    now = shipped_logits(path)
    assert now["model_config"] == ref["model_config"] and now["state_keys"] == ref["state_keys"]
    assert now["model_config"]["recall"]["window"] == 4096 and now["model_config"]["recall"]["bar_clock"]
    torch.testing.assert_close(torch.tensor(now["forward"]), torch.tensor(ref["forward"]), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(now["step"]), torch.tensor(ref["step"]), atol=1e-4, rtol=1e-5)
    for key in ("forward_sum", "step_sum"):
        assert abs(now[key] - ref[key]) < 1e-5 * max(1.0, abs(ref[key])), key


def test_small_presets_have_the_same_size() -> None:
    sizes = set()
    for name in SMALL:
        cfg = load_preset(name)
        sizes.add((cfg["n_layers"], cfg["d_model"], cfg["n_heads"], cfg["d_ff"]))
    assert len(sizes) == 1


def test_default_preset_builds_and_rebuilds_from_its_config() -> None:
    model = build_model(load_preset("spe_sine_gated"), 300)
    cfg = json.loads(json.dumps(model.config))
    clone = build_model(cfg, cfg["vocab_size"])
    clone.load_state_dict(model.state_dict())
    x = torch.randint(1, 300, (1, 20))
    model.eval(), clone.eval()
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(model(x, generator=g()), clone(x, generator=g()))


def test_paper_preset_shape() -> None:
    cfg = model_config_from(load_preset("paper_pop_piano"), 300)
    assert (cfg["n_layers"], cfg["d_model"], cfg["n_heads"], cfg["d_ff"]) == (24, 512, 8, 2048)
    assert cfg["attention"]["n_features"] == 128 and cfg["pe"]["realizations"] == 64 and cfg["pe"]["sines"] == 5
    assert cfg["pe"]["share"] and cfg["pe"]["gated"] and cfg["pe"]["kind"] == "spe_sine"


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ValueError):
        model_config_from({"pe": {"kind": "rope"}}, 10)
    with pytest.raises(ValueError, match=r"model\.attention\.kernel"):  # a typo names its option
        model_config_from({"attention": {"kernel": 3}}, 10)
    with pytest.raises(ValueError, match="chunk_size"):
        model_config_from({"attention": {"chunk_size": "big"}}, 10)


def test_chunk_size_auto_resolves_per_device() -> None:
    from musicgen.model.ops.linear_attention import resolve_chunk_size

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


def test_backend_choices_are_validated() -> None:
    """fla and auto are valid backends of linear attention (with or without decay); fla, like
    fast_transformers, is refused for softmax attention; auto is accepted there (nothing to choose)."""
    for backend in ("torch", "fla", "auto"):
        cfg = ModelConfig.from_mapping({"attention": {"backend": backend, "decay": "learned"}}, 10)
        assert cfg.attention.backend == backend
    with pytest.raises(ValueError, match="backend=fla only applies to attention.kind=linear"):
        ModelConfig.from_mapping({"attention": {"kind": "softmax", "backend": "fla"}}, 10)
    assert ModelConfig.from_mapping({"attention": {"kind": "softmax", "backend": "auto"}}, 10).attention.backend == "auto"
    with pytest.raises(ValueError, match=r"attention.backend='triton'; expected one of \('torch', 'fast_transformers', 'fla', 'auto'\)"):
        ModelConfig.from_mapping({"attention": {"backend": "triton"}}, 10)


def test_auto_backend_on_cpu_is_the_torch_kernel() -> None:
    """backend=auto is decided per call from the tensors: on a CPU it is the torch kernel, bit for bit
    (so a checkpoint trained with auto on a GPU generates on a CPU exactly as with torch)."""
    torch.manual_seed(0)
    a = build_model(small_cfg(attention__backend="torch", attention__decay="learned"), VOCAB).eval()
    b = build_model(small_cfg(attention__backend="auto", attention__decay="learned"), VOCAB).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randint(1, VOCAB, (2, 90))
    with torch.no_grad():
        la = a(x, generator=torch.Generator().manual_seed(3))
        lb = b(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(la, lb)


@pytest.mark.parametrize("name", ["spe_sine_gated", "spe_conv_gated", "softmax"])
def test_bf16_autocast_forward_cpu(name: str) -> None:
    cfg = load_preset(name)
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


if __name__ == "__main__":  # only when a new model is shipped: record what it computes
    (ROOT / "tests" / "model_shipped_logits.json").write_text(
        json.dumps(shipped_logits(ROOT / "checkpoints" / "musicgen-small.pt"), indent=1) + "\n")
