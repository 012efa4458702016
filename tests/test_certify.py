"""Certified bounds: sound on sampled and attacked points for every supported layer type and
norm, exact at eps = 0, monotone in eps, CROWN at least as tight as IBP, alpha-CROWN at least as
tight as CROWN, golden tensors, and clear errors for unsupported layers and models.

Regenerate the golden tensors after an intended change with::

    ADVLAB_REGEN_GOLDEN=1 python -m pytest tests/test_certify.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from advlab.attacks import pgd
from advlab.certify import certified, certified_radius, graph, ibp, margin_bounds
from advlab.certify.bounds import act_relaxation
from advlab.errors import ConfigError
from advlab.models import Arctan, Normalize, Residual
from advlab.registry import CERTIFIERS
from advlab.rng import SampleRNG
from advlab.threat import ThreatModel

GOLDEN = Path(__file__).parent / "data" / "golden" / "certify.safetensors"
REGEN = os.environ.get("ADVLAB_REGEN_GOLDEN") == "1"
KINDS = ["mlp", "cnn", "sigmoid", "tanh", "arctan", "pool", "residual"]


def _bn(channels: int, g: torch.Generator) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    bn.running_mean.normal_(generator=g)
    bn.running_var.uniform_(0.5, 2.0, generator=g)
    bn.weight.data.normal_(generator=g)
    return bn


def random_net(kind: str, seed: int) -> nn.Sequential:
    """A small random network on (1, 6, 6) inputs exercising one family of supported layers."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    norm = Normalize([0.5], [0.3])
    acts = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "arctan": Arctan}
    if kind == "mlp":
        net = nn.Sequential(norm, nn.Flatten(), nn.Linear(36, 20), nn.ReLU(),
                            nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, 5))  # fmt: skip
    elif kind == "cnn":  # conv with stride and padding, BatchNorm, average pooling, dropout
        net = nn.Sequential(norm, nn.Conv2d(1, 4, 3, stride=2, padding=1), _bn(4, g), nn.ReLU(),
                            nn.AvgPool2d(1), nn.Conv2d(4, 6, 2), nn.ReLU(), nn.Dropout(0.5),
                            nn.Flatten(), nn.Linear(24, 5))  # fmt: skip
    elif kind in acts:  # CNN-Cert's general activations, in a conv and a dense layer
        net = nn.Sequential(norm, nn.Conv2d(1, 3, 3), acts[kind](), nn.Flatten(),
                            nn.Linear(48, 12), acts[kind](), nn.Linear(12, 5))  # fmt: skip
    elif kind == "pool":  # overlapping, padded and plain max-pooling, and average pooling
        net = nn.Sequential(norm, nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                            nn.MaxPool2d(3, stride=1, padding=1), nn.Conv2d(4, 4, 3), nn.ReLU(),
                            nn.MaxPool2d(2), nn.AvgPool2d(2, stride=1), nn.Flatten(),
                            nn.Linear(4, 5))  # fmt: skip
    else:  # residual blocks, one nested in a Sequential, one with an activation inside
        net = nn.Sequential(norm, nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(),
                            Residual(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(3, 3, 1)),
                            nn.Sequential(nn.ReLU(), Residual(nn.Conv2d(3, 3, 3, padding=1))),
                            nn.Flatten(), nn.Linear(108, 5))  # fmt: skip
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def true_margins(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    z = net(x)
    return (z.gather(1, y[:, None]) - z).scatter(1, y[:, None], float("inf")).detach()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.3), ("l1", 1.0)])
@pytest.mark.parametrize("seed", [0, 1])
def test_bounds_hold_on_random_and_attacked_points(kind: str, norm: str, eps: float,
                                                   seed: int) -> None:  # fmt: skip
    net = random_net(kind, seed)
    x = torch.rand(12, 1, 6, 6, generator=torch.Generator().manual_seed(seed + 10))
    y = net(x).argmax(dim=1)
    threat = ThreatModel(norm, eps)
    bounds = {m: margin_bounds(net, x, y, threat, method=m) for m in ("ibp", "crown-ibp", "crown")}
    lo, hi = ibp(net, x, threat)
    fin = torch.isfinite(bounds["crown"])
    # CROWN's intermediate bounds are IBP's intersected with its own: never looser than IBP
    assert bool((bounds["ibp"][fin] <= bounds["crown"][fin] + 1e-5).all())
    points = [threat.random_start(x, SampleRNG(s, torch.arange(12))) for s in range(50)]
    points += [pgd(net, x, y, threat, steps=20, loss="margin", seed=s).x_adv for s in range(3)]
    for xa in points:
        assert bool(threat.contains(xa, x).all())
        m = true_margins(net, xa, y)
        for b in bounds.values():
            assert bool((b[fin] <= m[fin] + 1e-5).all())
        z = net(xa).detach()
        assert bool((lo <= z + 1e-5).all() and (z <= hi + 1e-5).all())


@pytest.mark.parametrize("kind", ["cnn", "tanh", "pool", "residual"])
def test_exact_at_zero_and_monotone_in_eps(kind: str) -> None:
    net = random_net(kind, 3)
    x = torch.rand(8, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    y = net(x).argmax(dim=1)
    exact = true_margins(net, x, y)
    fin = torch.isfinite(exact)
    for method in ("ibp", "crown-ibp", "crown"):
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


def test_unsupported_layers_and_models_are_named() -> None:
    x, y = torch.rand(2, 1, 6, 6), torch.zeros(2, dtype=torch.long)
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 10), nn.GELU(), nn.Linear(10, 3))
    with pytest.raises(ConfigError, match=r"layer 2 \(GELU\)"):
        margin_bounds(net, x, y, ThreatModel("linf", 0.1))
    nested = nn.Sequential(nn.Flatten(), Residual(nn.Linear(36, 36), nn.ELU()), nn.Linear(36, 3))
    with pytest.raises(ConfigError, match=r"layer 1.body.1 \(ELU\)"):
        margin_bounds(nested, x, y, ThreatModel("linf", 0.1))

    class Custom(nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return t.flatten(1)[:, :3]

    with pytest.raises(ConfigError, match="cannot bound a Custom"):
        margin_bounds(Custom(), x, y, ThreatModel("linf", 0.1))
    pool = nn.Sequential(nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(), nn.Linear(9, 3))
    with pytest.raises(ConfigError, match="ceil_mode"):
        margin_bounds(pool, x, y, ThreatModel("linf", 0.1))
    bn = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(36), nn.Linear(36, 3)).train()
    with pytest.raises(ConfigError, match="training mode"):
        ibp(bn, x, ThreatModel("linf", 0.1))
    mlp = random_net("mlp", 0)
    with pytest.raises(ConfigError, match="unknown method"):
        margin_bounds(mlp, x, y, ThreatModel("linf", 0.1), method="lp")
    with pytest.raises(ConfigError, match="outside the input box"):
        margin_bounds(mlp, x + 2, y, ThreatModel("linf", 0.1))
    with pytest.raises(ConfigError, match="NaN"):
        margin_bounds(mlp, x * float("nan"), y, ThreatModel("linf", 0.1))
    with pytest.raises(ConfigError, match="y of shape"):
        margin_bounds(mlp, x, y[:1], ThreatModel("linf", 0.1))


@pytest.mark.parametrize("kind", ["mlp", "cnn", "residual"])
def test_alpha_crown_is_sound_and_never_looser_than_crown(kind: str) -> None:
    net = random_net(kind, 4).requires_grad_(True)  # as a loaded model: weights need grad
    x = torch.rand(10, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    y = net(x).argmax(dim=1)
    threat = ThreatModel("linf", 0.08)
    crown = margin_bounds(net, x, y, threat, method="crown").detach()
    with torch.no_grad():  # optimizes its slopes even so, and leaves the weights' .grad alone
        alpha = margin_bounds(net, x, y, threat, method="alpha-crown", alpha_steps=15)
    assert all(p.grad is None for p in net.parameters())
    fin = torch.isfinite(crown)
    assert bool((alpha[fin] >= crown[fin] - 1e-6).all())
    assert float((alpha[fin] - crown[fin]).sum()) > 0  # the optimization does something here
    for s in range(3):
        xa = pgd(net, x, y, threat, steps=30, loss="margin", seed=s, restarts=2).x_adv
        assert bool((alpha[fin] <= true_margins(net, xa, y)[fin] + 1e-5).all())
    # the radius search passes radii where some layers have no unstable neuron at all
    r_crown = certified_radius(net, x, y, threat, method="crown", hi=0.5)
    r_alpha = certified_radius(net, x, y, threat, method="alpha-crown", hi=0.5, alpha_steps=3)
    assert bool((r_alpha >= r_crown - 1e-6).all())


@pytest.mark.parametrize("layer", [nn.Sigmoid(), nn.Tanh(), Arctan()])
def test_activation_relaxation_encloses_the_function(layer: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    lo = torch.randn(400, generator=g) * 3
    hi = lo + torch.rand(400, generator=g) * 6
    al, bl, au, bu = act_relaxation(layer, lo, hi)
    t = lo + (hi - lo) * torch.linspace(0, 1, 101)[:, None]
    f = layer(t)
    assert bool((al * t + bl <= f + 1e-6).all()) and bool((f <= au * t + bu + 1e-6).all())


def test_bounds_are_differentiable_for_certified_training() -> None:
    net = random_net("cnn", 0)
    for p in net.parameters():
        p.requires_grad_(True)
    x = torch.rand(4, 1, 6, 6)
    y = net(x).argmax(dim=1)
    for method in ("ibp", "crown-ibp", "crown"):
        m = margin_bounds(net, x, y, ThreatModel("linf", 0.05), method=method)
        grads = torch.autograd.grad(m[torch.isfinite(m)].sum(), list(net.parameters()))
        assert all(bool(torch.isfinite(gr).all()) for gr in grads)
        assert any(float(gr.abs().sum()) > 0 for gr in grads)


def test_certified_agrees_with_margins_and_registry() -> None:
    net = random_net("mlp", 6)
    x = torch.rand(20, 1, 6, 6, generator=torch.Generator().manual_seed(4))
    y = net(x).argmax(dim=1)
    threat = ThreatModel("linf", 0.02)
    ok = certified(net, x, y, threat, methods=("crown",), batch_size=7)
    with torch.no_grad():
        m = CERTIFIERS.get("crown")(net, x, y, threat)
    assert torch.equal(ok, (m > 0).all(dim=1))
    wrong = (y + 1) % 5  # a wrong label is never certified
    assert not bool(certified(net, x, wrong, threat).any())
    assert set(CERTIFIERS.names()) == {"ibp", "crown-ibp", "crown", "alpha-crown"}


def test_graph_reads_residual_blocks() -> None:
    nodes = graph(random_net("residual", 0))
    kinds = [n.kind for n in nodes]
    assert kinds.count("add") == 2 and kinds[0] == "input"
    for i, n in enumerate(nodes):
        assert all(j < i for j in n.inputs)


def _golden_outputs() -> dict[str, torch.Tensor]:
    out = {}
    x = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(21))
    for kind in ("mlp", "cnn", "tanh", "pool", "residual"):
        net = random_net(kind, 9)
        y = net(x).argmax(dim=1)
        for norm, eps in (("linf", 0.05), ("l2", 0.3)):
            for method in ("ibp", "crown-ibp", "crown"):
                m = margin_bounds(net, x, y, ThreatModel(norm, eps), method=method)
                out[f"{kind}.{norm}.{method}"] = m.masked_fill(torch.isinf(m), 0.0).contiguous()
    return out


def test_golden_bounds() -> None:
    out = _golden_outputs()
    if REGEN or not GOLDEN.exists():
        if not REGEN:
            pytest.fail(f"{GOLDEN} is missing; create it with ADVLAB_REGEN_GOLDEN=1")
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        save_file(out, str(GOLDEN))
    want = load_file(str(GOLDEN))
    assert set(want) == set(out)
    for key, value in out.items():
        assert torch.allclose(value, want[key], atol=1e-5, rtol=1e-5), key
