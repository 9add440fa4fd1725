"""Optional GPU backend: flash-linear-attention's Triton kernels (``attention.backend: fla`` or ``auto``).

fla (the ``fla-core`` package, ``pip install .[gpu]``) has a chunked causal linear-attention kernel with a
per-head decay, ``fla.ops.simple_gla.chunk_simple_gla``: for q, k (B, T, H, K), v (B, T, H, V) it computes
o_t = scale q_t S_t with S_t = exp(g_t) S_{t-1} + k_t v_t^T, from an optional initial state, and returns the
final state (N, H, K, V). It takes no feature map and no normaliser, so this adapter

* receives the features phi(q), phi(k) from the caller (the feature maps run as for the torch backend);
* appends a column of ones to v, so the last column of the output is the normaliser q_t·z_t and the last
  column of the state is z (exactly the (F x (D+1)) state of the torch kernel: the two backends exchange
  states, and generation steps from a state prefilled by either);
* divides num / (den + eps) itself, in float32;
* passes the decay as ``g = log_gamma`` expanded to (B, T, H) when the rates need a gradient
  (``attention.decay: learned`` in training): fla 0.6's backward returns no gradient for ``g_gamma``;
  ``g_gamma = log_gamma`` otherwise (fixed decay, inference), which needs no (B, T, H) tensor;
* passes ``scale=1.0`` (fla's default is K^-1/2) and transposes (B, H, L, F) <-> (B, L, H, F).

Precision policy (what the state and the normaliser get):

* Under CUDA autocast (bf16, or fp16 — run as bf16 because performer features exceed fp16's range), q, k
  and [v, 1] enter the kernels in bfloat16. fla keeps the running state of each (batch, head) in float32
  registers across the whole sequence (``chunk_fwd_h``: ``b_h`` is a float32 accumulator), so the sum over
  thousands of tokens is not accumulated in bf16; what is rounded to bf16 is each chunk's *snapshot* of the
  state read back by ``chunk_fwd_o`` (forward only; the backward recomputes them with
  ``states_in_fp32=True``) and the output columns, numerator and normaliser, before our float32 division.
  Each is one bf16 rounding (relative 2^-9), independent of the position: the output carries ~0.5% relative
  error at any length, the same order as the bf16 projections around it, and no drift with length. We judge
  this acceptable for bf16 training; the torch backend (float32 throughout) remains the reference and the
  CUDA parity tests bound the difference (tests/test_fla_backend.py). The final state is float32.
* Without autocast the inputs are float32. Triton's ``tl.dot`` then uses TF32 on Ampere and later (fla
  0.6 does not ask for IEEE float32 in these kernels): products carry ~1e-3 relative error, still
  accumulated in float32. For float32 results to the last digit use ``attention.backend: torch``.
* float64 is not supported by fla (``auto`` falls back to the torch kernel; ``fla`` raises).

If a long-context use ever needs the chunk snapshots or the normaliser column in float32 under bf16 inputs,
fla 0.6 has no switch for it (``states_in_fp32`` is hard-wired to False in ``chunk_simple_gla_fwd``); the
fix would be our own Triton forward kernel that keeps the normaliser as a separate float32 row sum q·z next
to the bf16 numerator (which also saves fla's 65th value column). Not needed for the measured tolerances.

Cost note: the ones column makes the value dimension D+1 = 65 for 64-dim heads; fla tiles V in blocks of
64 or 128, so the last column costs a partly empty block (measured on the H200 run: see docs/gpu.md).

Triton's CPU interpreter (``TRITON_INTERPRET=1``) cannot run fla 0.6's kernels (its autotuner wants an
active GPU driver, and the kernels call tensor methods on Python ints under the interpreter), so on a CPU
the adapter is tested against a pure-torch implementation of fla's documented contract
(tests/reference_kernels.py) and the real kernels only on CUDA.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import torch
from torch import Tensor

from .utils import EPS

__all__ = ["FlaMissing", "FlaUnsupported", "require_fla", "fla_available", "fla_applies", "fla_dtype",
           "load_kernel", "fla_causal_linear_attention"]

_FLA_HINT = (
    "attention.backend=fla needs the optional package fla-core (flash-linear-attention's Triton kernels, "
    "CUDA only): install it with `pip install .[gpu]` (the `gpu` extra of musicgen), or use "
    "attention.backend=auto (fla where it is installed and the tensors are on CUDA, else torch) or torch."
)


class FlaMissing(ImportError):
    """Raised when ``backend: fla`` is requested but fla (``fla-core``) cannot be imported."""


class FlaUnsupported(ValueError):
    """Raised when ``backend: fla`` meets tensors its kernels cannot take (not on CUDA, or float64)."""


@lru_cache(maxsize=1)
def _import_kernel() -> Callable[..., tuple[Tensor, Tensor]] | None:
    try:
        from fla.ops.simple_gla import chunk_simple_gla  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - ImportError, or a broken Triton install failing at import
        return None
    return chunk_simple_gla


def fla_available() -> bool:
    """Whether fla's kernel imports here (cached: the answer does not change within a process)."""
    return _import_kernel() is not None


def require_fla() -> Callable[..., tuple[Tensor, Tensor]]:
    """Return fla's ``chunk_simple_gla`` or raise :class:`FlaMissing` with the install hint."""
    kernel = _import_kernel()
    if kernel is None:
        raise FlaMissing(_FLA_HINT)
    return kernel


def fla_applies(q: Tensor) -> bool:
    """``backend: auto``'s choice, made per call from the tensors: fla on CUDA when installed, not for float64."""
    return q.is_cuda and q.dtype != torch.float64 and fla_available()


def load_kernel(device: torch.device, dtype: torch.dtype) -> Callable[..., tuple[Tensor, Tensor]]:
    """fla's kernel for tensors on ``device`` of ``dtype``, or one clear error (the tests substitute this)."""
    if device.type != "cuda":
        raise FlaUnsupported(
            f"attention.backend=fla runs on CUDA tensors only (got {device.type}): use attention.backend=auto "
            "(fla on CUDA, the torch kernel elsewhere) or attention.backend=torch")
    if dtype == torch.float64:
        raise FlaUnsupported("attention.backend=fla has no float64 kernels: use attention.backend=torch (or auto)")
    return require_fla()


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # pragma: no cover - older torch
        return torch.is_autocast_enabled()


def fla_dtype(device: torch.device) -> torch.dtype:
    """The kernels' input dtype: bfloat16 under half-precision autocast on ``device``, else float32."""
    if _autocast_on(device.type):
        try:
            half = torch.get_autocast_dtype(device.type)
        except AttributeError:  # pragma: no cover - older torch
            half = torch.get_autocast_gpu_dtype()
        if half in (torch.bfloat16, torch.float16):
            return torch.bfloat16
    return torch.float32


def fla_causal_linear_attention(
    q: Tensor, k: Tensor, v: Tensor, eps: float = EPS,
    log_gamma: Tensor | None = None, initial: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Normalised causal linear attention on fla's chunked kernel.

    q, k: (B, H, L, F) positive features; v: (B, H, L, D); ``log_gamma`` (H,) rates log(gamma) <= 0 or None;
    ``initial`` (B, H, F, D+1) state or None. Returns (out (B, H, L, D) float32, state (B, H, F, D+1) float32),
    the same contract as :func:`.chunk.chunked_causal_attention` (see the module docstring for precision).
    """
    dtype = fla_dtype(q.device)
    kernel = load_kernel(q.device, q.dtype)
    b, h, length, _ = q.shape
    d = v.shape[-1]
    with torch.autocast(device_type=q.device.type, enabled=False):
        qt = q.transpose(1, 2).to(dtype)  # (B, L, H, F); fla makes its inputs contiguous
        kt = k.transpose(1, 2).to(dtype)
        vt = v.transpose(1, 2).to(dtype)
        v1 = torch.cat([vt, vt.new_ones(b, length, h, 1)], dim=-1)  # (B, L, H, D+1), contiguous
        g = g_gamma = None
        if log_gamma is not None:
            rate = log_gamma.to(torch.float32)
            if rate.requires_grad:  # per-token g gets a gradient from fla; g_gamma gets none
                g = rate.view(1, 1, h).expand(b, length, h).contiguous()
            else:
                g_gamma = rate.contiguous()
        init = None if initial is None else initial.to(torch.float32).contiguous()
        o, state = kernel(qt, kt, v1, g=g, g_gamma=g_gamma, scale=1.0, initial_state=init, output_final_state=True)
        o = o.to(torch.float32).transpose(1, 2)  # (B, H, L, D+1)
        num, den = o.split([d, 1], dim=-1)  # split: no zero-filled slice gradients
        out = num / (den + eps)
    return out, state.to(torch.float32)
