"""Per-sample random streams: results that do not depend on batch size, order or shard.

A :class:`SampleRNG` gives every sample its own stream of random numbers. The numbers row ``i``
draws are a pure function of ``(seed, keys[i], how many numbers row i drew before)``: not of the
row's position in the batch, nor of the other rows, nor of the device. An evaluation keys each
sample by its dataset index, so an attack draws the same random start for sample 17 whether it
runs in a batch of 7 or of 250, first or last, in one process or in a shard of its own.

The generator is counter-based: position ``p`` of a stream with state ``s`` is
``splitmix64(s + (p + 1) * golden)``, computed with int64 tensor arithmetic (wrapping, as
two's-complement multiplication does) on the device the numbers are wanted on. SplitMix64 is the
seeding generator of Steele, Lea & Flood 2014 ("Fast splittable pseudorandom number generators",
OOPSLA); its output function passes BigCrush when fed a Weyl sequence, which is what a stream
position is here. Integer steps are exact on every device, so the uniform draws are bit-identical
on CPU and GPU.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from advlab.errors import ConfigError

_MASK64 = (1 << 64) - 1


def _signed(v: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    v &= _MASK64
    return v - (1 << 64) if v >= 1 << 63 else v


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_M1 = _signed(0xBF58476D1CE4E5B9)
_M2 = _signed(0x94D049BB133111EB)


def _lsr(z: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 bits (torch's ``>>`` is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def mix64(z: Tensor) -> Tensor:
    """The SplitMix64 output function on int64 tensors (bits as in the unsigned original)."""
    z = (z ^ _lsr(z, 30)) * _M1
    z = (z ^ _lsr(z, 27)) * _M2
    return z ^ _lsr(z, 31)


def mix64_int(z: int) -> int:
    """:func:`mix64` on one Python int, unsigned in and out (the reference for the tests)."""
    z &= _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def derive_seed(seed: int, *labels: object) -> int:
    """A 63-bit seed derived from ``seed`` and any labels (e.g. an attack's name and eps).

    Distinct labels give independent streams; equal labels give equal seeds on every machine.
    """
    key = "|".join([str(int(seed)), *(repr(v) for v in labels)]).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & (2**63 - 1)


class SampleRNG:
    """Independent random streams, one per sample, keyed by the samples' ids.

    Args:
        seed: the root seed (any int).
        keys: ``(B,)`` integer ids of the samples (an evaluation uses dataset indices), or an
            int ``B`` for the ids ``0 .. B-1``. Row ``i`` of every draw comes from the stream of
            ``keys[i]``.
        device: where the stream positions live and numbers are made (default: ``keys``'s).

    Example:
        >>> rng = SampleRNG(0, torch.tensor([5, 9]))
        >>> a = rng.uniform((3,))             # (2, 3): row 0 from sample 5's stream
        >>> b = SampleRNG(0, torch.tensor([9])).uniform((3,))
        >>> torch.equal(a[1], b[0])           # sample 9 draws the same numbers in any batch
        True
    """

    def __init__(
        self, seed: int, keys: Tensor | int, *, device: torch.device | str | None = None
    ) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed must be an integer, got {seed!r}")
        if isinstance(keys, int):
            keys = torch.arange(keys)
        if not isinstance(keys, Tensor) or keys.dim() != 1 or keys.is_floating_point():
            raise ConfigError("keys must be a 1-D integer tensor of sample ids")
        dev = torch.device(device) if device is not None else keys.device
        self.seed = seed
        self.keys = keys.to(device=dev, dtype=torch.long)
        root = _signed(derive_seed(seed, "sample-rng"))
        self._state = mix64(root + self.keys * _GOLDEN)
        self._pos = torch.zeros_like(self.keys)

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def __repr__(self) -> str:
        return f"SampleRNG(seed={self.seed}, n={len(self)})"

    @property
    def device(self) -> torch.device:
        return self.keys.device

    def copy(self, device: torch.device | str | None = None) -> SampleRNG:
        """An independent copy of the streams at their current positions (on ``device``)."""
        dev = torch.device(device) if device is not None else self.device
        out = SampleRNG.__new__(SampleRNG)
        out.seed = self.seed
        out.keys, out._state = self.keys.to(dev), self._state.to(dev)
        out._pos = self._pos.to(dev, copy=True)
        return out

    def fork(self, *labels: object) -> SampleRNG:
        """A fresh, independent set of streams for the same samples (e.g. one per restart)."""
        return SampleRNG(derive_seed(self.seed, *labels), self.keys)

    def _bits(self, rows: Tensor | None, per_row: int, device: torch.device) -> Tensor:
        """``(n, per_row)`` int64 random bits for ``rows``, advancing their positions."""
        if rows is None:
            rows = torch.arange(len(self), device=self.device)
        else:
            rows = rows.to(device=self.device, dtype=torch.long)
        state, pos = self._state[rows], self._pos[rows]
        self._pos.index_add_(0, rows, torch.full_like(rows, per_row))
        offs = torch.arange(1, per_row + 1, device=self.device, dtype=torch.long)
        z = state[:, None] + (pos[:, None] + offs[None, :]) * _GOLDEN
        return mix64(z).to(device)

    def uniform(
        self,
        shape: Sequence[int] = (),
        rows: Tensor | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Uniform numbers in ``[0, 1)``, ``(len(rows), *shape)``; ``rows`` default to all.

        ``rows`` must not repeat a row within one call.
        """
        dev = torch.device(device) if device is not None else self.device
        per = math.prod(shape)
        n = len(self) if rows is None else int(rows.shape[0])
        if per == 0 or n == 0:
            return torch.zeros((n, *shape), dtype=dtype, device=dev)
        z = self._bits(rows, per, dev)
        if dtype == torch.float64:
            u = _lsr(z, 11).to(torch.float64) * 2.0**-53
        else:
            u = _lsr(z, 40).to(torch.float32) * 2.0**-24
            if dtype != torch.float32:  # half precision would round values near 1 up to 1
                below_one = torch.nextafter(
                    torch.ones((), dtype=dtype), torch.zeros((), dtype=dtype)
                )
                u = u.to(dtype).clamp_(max=float(below_one))
        return u.view(n, *shape)

    def normal(
        self,
        shape: Sequence[int] = (),
        rows: Tensor | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Standard normal numbers (Box-Muller on pairs of uniforms), ``(len(rows), *shape)``."""
        n = len(self) if rows is None else int(rows.shape[0])
        per = math.prod(shape)
        u = self.uniform((2, per), rows, dtype=torch.float64, device=device)
        r = torch.sqrt(-2.0 * torch.log1p(-u[:, 0]))  # 1 - u in (0, 1]
        return (r * torch.cos(2.0 * math.pi * u[:, 1])).to(dtype).view(n, *shape)

    def integers(
        self,
        high: int,
        shape: Sequence[int] = (),
        rows: Tensor | None = None,
        *,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Integers uniform in ``[0, high)``, int64, ``(len(rows), *shape)``."""
        if isinstance(high, bool) or not isinstance(high, int) or high < 1:
            raise ConfigError(f"high must be an integer >= 1, got {high!r}")
        u = self.uniform(shape, rows, dtype=torch.float64, device=device)
        return (u * high).floor().long().clamp_(max=high - 1)


def as_sample_rng(seed: int | SampleRNG, n: int, device: torch.device) -> SampleRNG:
    """``seed`` as streams for a batch of ``n`` samples: an int keys them ``0 .. n-1``; a
    :class:`SampleRNG` is copied (at its current positions), so the caller's object is left as
    it was and passing it again gives the same numbers."""
    if isinstance(seed, SampleRNG):
        if len(seed) != n:
            raise ConfigError(f"the SampleRNG holds {len(seed)} streams for a batch of {n} samples")
        return seed.copy(device)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(
            f"seed must be an int or an advlab.rng.SampleRNG, got {type(seed).__name__}"
        )
    return SampleRNG(seed, torch.arange(n, device=device))
