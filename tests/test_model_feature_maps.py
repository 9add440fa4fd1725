"""Feature maps: FAVOR+ features approximate softmax attention; elu features are positive."""

from __future__ import annotations

import math

import pytest
import torch

from musicgen.model.feature_maps import EluFeatureMap, PerformerFeatureMap, orthogonal_gaussian


def test_performer_approximates_softmax_attention_weights() -> None:
    torch.manual_seed(0)
    dim, n_keys = 16, 12
    fmap = PerformerFeatureMap(n_heads=1, in_dim=dim, n_features=8192, redraw_prob=1.0)
    q = 0.5 * torch.randn(1, 1, 1, dim)
    k = 0.5 * torch.randn(1, 1, n_keys, dim)
    feats = fmap.draw(torch.Generator().manual_seed(0), torch.device("cpu"))
    fq, fk = fmap(q, feats, is_query=True), fmap(k, feats, is_query=False)
    assert (fq > 0).all() and (fk > 0).all()
    approx = (fq @ fk.transpose(-1, -2)).flatten()
    approx = approx / approx.sum()
    exact = torch.softmax((q @ k.transpose(-1, -2)).flatten() / dim**0.5, dim=0)
    assert (approx - exact).abs().max() < 0.02


def test_orthogonal_features_are_orthogonal_within_blocks() -> None:
    w = orthogonal_gaussian(2, 8, 8, torch.Generator().manual_seed(0), torch.device("cpu"))
    gram = w[0] @ w[0].T
    off = gram - torch.diag(torch.diagonal(gram))
    assert off.abs().max() < 1e-4


def test_performer_query_stabiliser_cancels_and_no_overflow() -> None:
    fmap = PerformerFeatureMap(1, 8, 32, 1.0)
    q = 30.0 * torch.randn(1, 1, 5, 8)  # exp(w·q) alone would overflow float32
    fq = fmap(q, fmap.features, is_query=True)
    assert torch.isfinite(fq).all() and (fq.amax(-1) > 0).all()


def test_elu_features_positive() -> None:
    x = torch.randn(2, 2, 7, 4)
    assert (EluFeatureMap(4)(x, None, True) > 0).all()
    assert (EluFeatureMap(4)(100 * x, None, True) >= 0).all()  # underflows to 0, never negative


def test_elu_feature_map_values_and_gradcheck() -> None:
    """The fused elu+1 (derivative read off its output) equals elu(x) + 1, values and gradients,
    on a transposed (non-contiguous) input like the attention's."""
    from musicgen.model.feature_maps import EluFeatureMap

    fm = EluFeatureMap(5)
    x = (torch.randn(2, 7, 3, 5, dtype=torch.float64) * 3).transpose(1, 2).requires_grad_()
    y = fm(x, None, is_query=True)
    assert y.is_contiguous() and torch.allclose(y, torch.nn.functional.elu(x) + 1)
    assert torch.autograd.gradcheck(lambda t: fm(t, None, is_query=False), (x,))


@pytest.mark.parametrize("is_query", [True, False])
def test_performer_feature_map_matches_autograd_reference(is_query: bool) -> None:
    """The hand-written FAVOR+ map against the formula through autograd (float64): values (up to
    the per-query stabiliser, which cancels in attention) and the gradient of the attention weights."""
    from musicgen.model.feature_maps import PerformerFeatureMap

    torch.manual_seed(0)
    fm = PerformerFeatureMap(2, 8, 16, 1.0).double()
    x = torch.randn(2, 5, 2, 8, dtype=torch.float64).transpose(1, 2).requires_grad_()  # (B, H, L, dim), strided
    k = torch.randn(2, 2, 5, 8, dtype=torch.float64)
    w = fm.features * 8**-0.25

    def reference(t):
        proj = t @ w.transpose(-1, -2).unsqueeze(0) - (t * t).sum(-1, keepdim=True) / (2 * 8**0.5)
        return torch.exp(proj - 0.5 * math.log(16))

    y, y_ref = fm(x, fm.features, is_query=is_query), reference(x)
    ratio = y / y_ref  # 1 for keys, a per-query constant for queries
    assert torch.allclose(ratio, ratio[..., :1].expand_as(ratio), rtol=1e-10)
    if not is_query:
        assert torch.allclose(y, y_ref, rtol=1e-10)
    fk = reference(k)

    def weights(phi):  # normalised attention weights of every query over the 5 keys
        a = phi @ fk.transpose(-1, -2)
        return a / a.sum(-1, keepdim=True)

    if is_query:
        g = torch.autograd.grad(weights(fm(x, fm.features, True)).square().sum(), x)[0]
        g_ref = torch.autograd.grad(weights(reference(x)).square().sum(), x)[0]
    else:
        probe = torch.randn_like(y)
        g = torch.autograd.grad((fm(x, fm.features, False) * probe).sum(), x)[0]
        g_ref = torch.autograd.grad((reference(x) * probe).sum(), x)[0]
    assert torch.allclose(g, g_ref, rtol=1e-8, atol=1e-12)
