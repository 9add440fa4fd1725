"""Positional parameters: their optimizer group, and the diagnostic that shows whether they are used."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from musicgen.evaluation.positional import parameter_movement, positional_kernels, recent_attention_share
from musicgen.model import build_model
from musicgen.inference.parameters import positional_names, positional_names_of_config, positional_parameters
from musicgen.training.optim import make_optimizer

VOCAB = 40
CFG = {"n_layers": 2, "d_model": 32, "n_heads": 2, "d_ff": 48, "dropout": 0.0,
       "attention": {"kind": "linear", "feature_map": "elu", "chunk_size": 16, "decay": "learned",
                     "decay_tau_min": 4.0, "decay_tau_max": 64.0},
       "pe": {"kind": "spe_sine", "gated": True, "share": True, "realizations": 16, "sines": 3}}


def _model(**attention) -> torch.nn.Module:
    cfg = copy.deepcopy(CFG)
    cfg["attention"].update(attention)
    torch.manual_seed(0)
    return build_model(cfg, VOCAB)


def test_positional_group_has_no_weight_decay_and_scaled_lr() -> None:
    model = _model()
    names = sorted(positional_names(model))
    assert any(n.endswith("freqs") for n in names) and any(n.endswith("spe.gate") for n in names)
    assert any(n.endswith("decay.log_tau") for n in names) and not any("qkv" in n for n in names)
    opt = make_optimizer(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.98), pe_lr_scale=10.0)
    group = next(g for g in opt.param_groups if g["name"] == "positional")
    assert group["weight_decay"] == 0.0 and group["lr"] == pytest.approx(1e-2)
    assert len(group["params"]) == len(names)
    with pytest.raises(ValueError, match="pe_lr_scale"):
        make_optimizer(model, 1e-3, 0.1, (0.9, 0.98), pe_lr_scale=0)


@pytest.mark.parametrize("preset", ["spe_sine_gated_decay", "spe_sine_gated_decay_local", "spe_conv_gated", "spe_sine",
                                    "ape", "softmax"])
def test_positional_parameters_are_declared_by_their_modules(preset: str) -> None:
    """The modules' declarations give exactly the parameters the name fragments used to pick (code_generators.,
    .spe., .decay.), also on the meta device (exports); the local window's are not positional."""
    from musicgen.model.config import load_preset

    cfg = {**load_preset(preset), "vocab_size": VOCAB}
    model = build_model(cfg, VOCAB)
    by_fragment = {n for n, _ in model.named_parameters()
                   if any(m in n for m in ("code_generators.", ".spe.", ".decay."))}
    assert positional_names(model) == by_fragment
    assert positional_names_of_config(cfg) == by_fragment
    assert not any(".local." in n for n in positional_names(model))


def _train(model, steps: int, pe_lr_scale: float) -> None:
    opt = make_optimizer(model, lr=1e-3, weight_decay=0.01, betas=(0.9, 0.98), pe_lr_scale=pe_lr_scale)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randint(1, VOCAB, (4, 65), generator=g)
        x[:, 1::2] = x[:, 0:-1:2]  # a copy task: the previous token predicts the next one
        logits = model(x[:, :-1])
        F.cross_entropy(logits.reshape(-1, VOCAB), x[:, 1:].reshape(-1)).backward()
        opt.step()
        opt.zero_grad()


def test_movement_report_sees_training_move_positional_parameters() -> None:
    """The diagnostic reports ~0 for an untrained model and a clear move after training, more with the
    positional learning-rate scale than without."""

    class Ckpt:
        training_state: dict = {}
        config = {"seed": 0}
        model_config: dict = {}

    moved = {}
    for scale in (1.0, 10.0):
        model = _model()
        Ckpt.training_state = {"positional_init": positional_parameters(model)}
        untouched = parameter_movement(model, Ckpt)["parameters"]
        assert all(row["mean_abs_change"] == 0 for row in untouched.values())
        _train(model, 30, scale)
        rows = parameter_movement(model, Ckpt)["parameters"]
        moved[scale] = rows["code_generators.0.freqs"]["mean_abs_change"]
        taus = rows["blocks.0.attn.decay.log_tau"]["tau_tokens"]
        assert taus[0] == [4.0, 64.0] and taus[1] != taus[0]
    assert moved[10.0] > 3 * moved[1.0] > 0


def test_kernels_decay_only_is_exponential_and_spe_starts_correlated() -> None:
    lags = torch.arange(0, 200)
    model = _model()
    model.eval()
    kern = positional_kernels(model, lags)  # (layers, heads, lags)
    assert kern.shape == (2, 2, 200)
    assert abs(kern[0, :, 0]).max() <= 1.0 + 1e-6
    plain = build_model({**CFG, "pe": {"kind": "none"}}, VOCAB)
    decay_only = positional_kernels(plain, lags)
    expected = torch.exp(-lags.double() / torch.tensor([4.0, 64.0]).view(-1, 1)).numpy()
    assert abs(decay_only[0] - expected).max() < 1e-5


def test_recent_share_uniform_without_decay_and_local_with_fast_decay() -> None:
    """A position-blind running mean puts the uniform share on recent tokens; a 2-token decay nearly all."""
    songs = [torch.randint(1, VOCAB, (400,), generator=torch.Generator().manual_seed(s)).tolist() for s in range(2)]
    blind = _model(decay="none")
    blind.eval()
    torch.nn.init.zeros_(blind.blocks[0].attn.qkv.weight)  # q = k = bias = 0: every key weighs the same
    share = recent_attention_share(blind, songs, 200, 400, recent=32, queries=8)
    layer0 = share["share_by_layer_head"][0]
    assert all(abs(v - share["uniform_share"]) < 0.01 for v in layer0)
    local = _model(decay="fixed", decay_tau_min=2.0, decay_tau_max=2.0)
    local.eval()
    share = recent_attention_share(local, songs, 200, 400, recent=32, queries=8)
    assert share["share_mean"] > 0.99 > 0.2 > share["uniform_share"]
