"""Per-sample random streams: exact SplitMix64 arithmetic, independence from the batch."""

from __future__ import annotations

import math
import random

import pytest
import torch

from advlab.errors import ConfigError
from advlab.rng import SampleRNG, as_sample_rng, derive_seed, mix64, mix64_int


def test_mix64_matches_the_unsigned_reference() -> None:
    rnd = random.Random(0)
    vals = [rnd.getrandbits(64) for _ in range(2000)] + [0, 1, 2**63 - 1, 2**63, 2**64 - 1]
    signed = torch.tensor([v - 2**64 if v >= 2**63 else v for v in vals])
    got = [(int(v) + 2**64) % 2**64 for v in mix64(signed).tolist()]
    assert got == [mix64_int(v) for v in vals]


def test_a_samples_numbers_do_not_depend_on_its_batch() -> None:
    keys = torch.tensor([11, 3, 42, 7])
    full = SampleRNG(5, keys)
    a, b = full.uniform((6,)), full.normal((2, 3))
    for j, k in enumerate(keys.tolist()):
        alone = SampleRNG(5, torch.tensor([k]))
        assert torch.equal(alone.uniform((6,))[0], a[j])
        assert torch.equal(alone.normal((2, 3))[0], b[j])
    # drawing for a subset advances only those rows
    sub = SampleRNG(5, keys)
    sub.uniform((6,), torch.tensor([2]))
    assert torch.equal(sub.uniform((6,), torch.tensor([0]))[0], a[0])
    assert torch.equal(
        sub.uniform((6,), torch.tensor([2]))[0],
        SampleRNG(5, torch.tensor([42])).uniform((12,))[0, 6:],
    )


def test_seeds_keys_and_forks_are_independent() -> None:
    keys = torch.arange(4)
    a = SampleRNG(0, keys).uniform((8,))
    assert not torch.equal(a, SampleRNG(1, keys).uniform((8,)))
    assert not torch.equal(a[0], a[1])
    f = SampleRNG(0, keys).fork("restart", 1).uniform((8,))
    assert not torch.equal(a, f)
    assert torch.equal(f, SampleRNG(0, keys).fork("restart", 1).uniform((8,)))
    assert derive_seed(0, "pgd", 0.1) == derive_seed(0, "pgd", 0.1) != derive_seed(0, "pgd", 0.2)


def test_distributions() -> None:
    rng = SampleRNG(3, 200)
    u = rng.uniform((500,))
    assert 0.0 <= float(u.min()) and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.005
    n = rng.normal((500,), dtype=torch.float64)
    assert abs(float(n.mean())) < 0.01 and abs(float(n.std()) - 1) < 0.01
    assert float(((n > 1.96) | (n < -1.96)).double().mean()) == pytest.approx(0.05, abs=0.005)
    k = rng.integers(7, (500,))
    counts = torch.bincount(k.flatten(), minlength=7).double() / k.numel()
    assert k.min() >= 0 and k.max() <= 6 and (counts - 1 / 7).abs().max() < 0.005
    u64 = SampleRNG(3, 2).uniform((4,), dtype=torch.float64)
    assert u64.dtype == torch.float64 and math.isfinite(float(u64.sum()))


def test_as_sample_rng_and_errors() -> None:
    r = as_sample_rng(4, 3, torch.device("cpu"))
    assert r.keys.tolist() == [0, 1, 2] and r.seed == 4
    same = SampleRNG(1, 3)
    first = as_sample_rng(same, 3, torch.device("cpu")).uniform((4,))
    # a SampleRNG passed as a seed is copied: passing it again gives the same numbers
    assert torch.equal(as_sample_rng(same, 3, torch.device("cpu")).uniform((4,)), first)
    assert torch.equal(same.uniform((4,)), first)  # and the caller's object was not advanced
    with pytest.raises(ConfigError, match="3 streams for a batch of 4"):
        as_sample_rng(same, 4, torch.device("cpu"))
    with pytest.raises(ConfigError, match="SampleRNG"):
        as_sample_rng(1.5, 3, torch.device("cpu"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="integer"):
        SampleRNG("0", 3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="1-D integer"):
        SampleRNG(0, torch.rand(3))
    with pytest.raises(ConfigError, match="high"):
        same.integers(0)
