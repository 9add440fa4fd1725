"""Random draws shared by the parallel and the recurrent forms of the model.

The parity contract (``forward(x, generator=g)`` == stepping after ``init_state(generator=g)``)
only holds if both forms consume random numbers in exactly the same order and block sizes.
Everything random in the model (SPE noise, gating noise, performer features) therefore goes
through the two helpers below instead of calling ``torch.randn`` ad hoc.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["randn", "derive_seed", "NoiseStream"]


def randn(
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    device: torch.device | str | None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal draw on ``device``.

    With a generator, the numbers are drawn on the *generator's* device and then moved: a CPU
    generator can seed a CUDA model and the values do not depend on the model's device.
    Without one, the global RNG of ``device`` is used (fresh noise per training batch).
    """
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def derive_seed(generator: torch.Generator | None) -> int:
    """Draw a 62-bit seed from ``generator`` (or the global CPU RNG when None)."""
    dev = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=dev).item())


class NoiseStream:
    """Endless stream of i.i.d. N(0, 1) samples of shape ``sample_shape``.

    Samples are produced in fixed-size blocks from a private generator living on ``device``.
    Reading ``n`` samples at once (parallel forward) or one at a time (recurrent step) therefore
    yields bit-identical values, which is what makes ConvSPE generation match training-time
    codes without any maximum length: the recurrent form only keeps the current block.
    """

    def __init__(
        self,
        seed: int,
        sample_shape: tuple[int, ...],
        device: torch.device | str,
        block: int = 64,
    ) -> None:
        self.sample_shape = tuple(sample_shape)
        self.device = torch.device(device)
        self.block = int(block)
        self._gen = torch.Generator(device=self.device)
        self._gen.manual_seed(seed)
        self._buf: Tensor | None = None
        self._pos = self.block  # forces a draw on first take

    def _refill(self) -> None:
        self._buf = torch.randn(
            (self.block, *self.sample_shape), generator=self._gen, device=self.device
        )
        self._pos = 0

    def take(self, n: int) -> Tensor:
        """Return the next ``n`` samples as a tensor of shape (n, *sample_shape)."""
        parts: list[Tensor] = []
        left = n
        while left > 0:
            if self._pos >= self.block:
                self._refill()
            assert self._buf is not None
            m = min(left, self.block - self._pos)
            parts.append(self._buf[self._pos : self._pos + m])
            self._pos += m
            left -= m
        if len(parts) == 1:
            return parts[0]
        return torch.cat(parts, dim=0)

    def nbytes(self) -> int:
        """Memory held by the stream (one block), constant over time."""
        return 0 if self._buf is None else self._buf.numel() * self._buf.element_size()
