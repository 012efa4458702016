"""Certified bounds: sound on sampled and attacked points, exact at eps = 0, monotone in eps,
CROWN at least as tight as IBP, and a clear error for unsupported layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advlab.attacks import pgd
from advlab.certify import certified_radius, ibp, margin_bounds
from advlab.errors import ConfigError
from advlab.models import Normalize
from advlab.rng import SampleRNG
from advlab.threat import ThreatModel


def random_net(kind: str, seed: int) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if kind == "mlp":
        net = nn.Sequential(Normalize([0.5], [0.3]), nn.Flatten(), nn.Linear(36, 20), nn.ReLU(),
                            nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, 5))  # fmt: skip
    else:  # every supported layer type: conv with stride and padding, BatchNorm, pooling
        bn = nn.BatchNorm2d(4)
        bn.running_mean.normal_(generator=g)
        bn.running_var.uniform_(0.5, 2.0, generator=g)
        bn.weight.data.normal_(generator=g)
        net = nn.Sequential(Normalize([0.5], [0.3]), nn.Conv2d(1, 4, 3, stride=2, padding=1),
                            bn, nn.ReLU(), nn.AvgPool2d(1), nn.Conv2d(4, 6, 2), nn.ReLU(),
                            nn.Dropout(0.5), nn.Flatten(), nn.Linear(24, 5))  # fmt: skip
    return net.eval()


def true_margins(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    z = net(x)
    return (z.gather(1, y[:, None]) - z).scatter(1, y[:, None], float("inf")).detach()


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.3), ("l1", 1.0)])
@pytest.mark.parametrize("seed", [0, 1])
def test_bounds_hold_on_random_and_attacked_points(kind: str, norm: str, eps: float,
                                                   seed: int) -> None:  # fmt: skip
    net = random_net(kind, seed)
    x = torch.rand(12, 1, 6, 6, generator=torch.Generator().manual_seed(seed + 10))
    y = net(x).argmax(dim=1)
    threat = ThreatModel(norm, eps)
    crown = margin_bounds(net, x, y, threat, method="crown")
    box = margin_bounds(net, x, y, threat, method="ibp")
    lo, hi = ibp(net, x, threat)
    fin = torch.isfinite(crown)
    assert bool((box[fin] <= crown[fin] + 1e-5).all())  # CROWN is at least as tight here
    points = [threat.random_start(x, SampleRNG(s, torch.arange(12))) for s in range(50)]
    points += [pgd(net, x, y, threat, steps=20, loss="margin", seed=s).x_adv for s in range(3)]
    for xa in points:
        m = true_margins(net, xa, y)
        assert bool((crown[fin] <= m[fin] + 1e-5).all())
        z = net(xa).detach()
        assert bool((lo <= z + 1e-5).all() and (z <= hi + 1e-5).all())


def test_exact_at_zero_and_monotone_in_eps() -> None:
    net = random_net("cnn", 3)
    x = torch.rand(8, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    y = net(x).argmax(dim=1)
    exact = true_margins(net, x, y)
    fin = torch.isfinite(exact)
    for method in ("ibp", "crown"):
        at0 = margin_bounds(net, x, y, ThreatModel("linf", 0.0), method=method)
        assert torch.allclose(at0[fin], exact[fin], atol=1e-5)
        prev = at0
        for eps in (0.01, 0.03, 0.1):
            cur = margin_bounds(net, x, y, ThreatModel("linf", eps), method=method)
            assert bool((cur[fin] <= prev[fin] + 1e-5).all())
            prev = cur


def test_a_certified_sample_is_never_broken_by_pgd() -> None:
    net = random_net("mlp", 5)
    x = torch.rand(32, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    y = net(x).argmax(dim=1)
    radius = certified_radius(net, x, y, ThreatModel("linf", 0.1))
    assert bool((radius > 0).any())
    for i in torch.nonzero(radius > 0).flatten().tolist():
        threat = ThreatModel("linf", float(radius[i]))
        res = pgd(net, x[i : i + 1], y[i : i + 1], threat, steps=50, restarts=3, loss="margin")
        assert not bool(res.success.any())


def test_unsupported_layers_are_named() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 10), nn.GELU(), nn.Linear(10, 3))
    x, y = torch.rand(2, 1, 6, 6), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ConfigError, match=r"layer 2 \(GELU\)"):
        margin_bounds(net, x, y, ThreatModel("linf", 0.1))
    bn = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(36), nn.Linear(36, 3)).train()
    with pytest.raises(ConfigError, match="training mode"):
        ibp(bn, x, ThreatModel("linf", 0.1))
    with pytest.raises(ConfigError, match="unknown method"):
        margin_bounds(random_net("mlp", 0), x, y, ThreatModel("linf", 0.1), method="lp")
