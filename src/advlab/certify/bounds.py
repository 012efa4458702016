"""Sound bounds on a classifier's outputs over a threat set: interval bound propagation (IBP)
and backward linear bound propagation (CROWN; the family CNN-Cert belongs to).

A model is read as a chain of **affine maps** and **ReLUs** (:func:`chain`). Affine maps are the
layers that are affine in their input: ``Linear``, ``Conv2d`` (any stride, padding, dilation,
groups), ``Flatten``, ``AvgPool2d``, ``BatchNorm`` in eval mode, advlab's ``Normalize``,
``Identity`` and ``Dropout`` in eval mode. CROWN takes their transposes with
:func:`torch.func.vjp`, so one code path serves all of them and stays exact. Any other layer
raises a :class:`~advlab.errors.ConfigError` naming it: no layer is ever skipped.

The input set is the threat model's ball around ``x`` intersected with the input box. For L∞
that set is a box and the linear bound over it is exact; for L2 and L1 the bound is the larger
(tighter) of the ball's dual-norm bound and the bound over the box hull, both sound.

Reference:
    Gowal et al. 2018, "On the Effectiveness of Interval Bound Propagation for Training
    Verifiably Robust Models"; Zhang et al. 2018, "Efficient Neural Network Robustness
    Certification with General Activation Functions" (CROWN); Boopathy et al. 2019, "CNN-Cert".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advlab.errors import ConfigError
from advlab.threat import ThreatModel

#: affine layers whose weight matrix is elementwise non-negative: ``|W| r = f(r) - f(0)``
_NONNEGATIVE = (nn.Flatten, nn.AvgPool2d, nn.Identity, nn.Dropout)
METHODS = ("ibp", "crown")


@dataclass
class _Step:
    """One element of the chain: an affine layer, or a ReLU."""

    kind: str  # "affine" or "relu"
    layer: nn.Module
    name: str


def chain(model: nn.Module) -> list[_Step]:
    """``model`` as a list of affine layers and ReLUs (nested ``nn.Sequential`` flattened).

    Raises:
        ConfigError: a layer that is neither affine nor a ReLU (named, with its position), or a
            BatchNorm/Dropout layer in training mode.
    """
    from advlab.models.zoo import Normalize

    steps: list[_Step] = []

    def walk(module: nn.Module, prefix: str) -> None:
        layers = list(module) if isinstance(module, nn.Sequential) else [module]
        for i, layer in enumerate(layers):
            name = f"{prefix}{i} ({type(layer).__name__})"
            if isinstance(layer, nn.Sequential):
                walk(layer, f"{prefix}{i}.")
            elif isinstance(layer, nn.ReLU):
                steps.append(_Step("relu", layer, name))
            elif isinstance(layer, (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d,
                                    Normalize, *_NONNEGATIVE)):  # fmt: skip
                if layer.training and isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
                    raise ConfigError(
                        f"layer {name} is in training mode; call model.eval() before certifying"
                    )
                steps.append(_Step("affine", layer, name))
            else:
                raise ConfigError(
                    f"cannot bound layer {name}: supported are Linear, Conv2d, Flatten, "
                    "AvgPool2d, BatchNorm (eval), Normalize, Identity, Dropout and ReLU in an "
                    "nn.Sequential; replace it or certify a model without it"
                )

    walk(model, "")
    return steps


def _eps(threat: ThreatModel | Tensor, x: Tensor) -> Tensor:
    """Per-sample radius ``(B,)``."""
    eps = threat.eps if isinstance(threat, ThreatModel) else threat
    return torch.as_tensor(eps, dtype=x.dtype, device=x.device).expand(x.shape[0])


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def input_box(x: Tensor, threat: ThreatModel, eps: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Elementwise bounds of the threat set: the ball's box hull intersected with the input box.

    Shape: ``x: (B, *)``; ``eps``: ``(B,)`` radii overriding ``threat.eps``.
    """
    e = _bcast(_eps(threat, x) if eps is None else eps, x)
    return (x - e).clamp(min=threat.lower), (x + e).clamp(max=threat.upper)


# ---------------------------------------------------------------------------------------------
# IBP


def _abs_apply(layer: nn.Module, r: Tensor) -> Tensor:
    """``|W| r`` for affine ``layer`` ``f(v) = W v + b`` and ``r >= 0``."""
    if isinstance(layer, nn.Linear):
        return r @ layer.weight.abs().T
    if isinstance(layer, nn.Conv2d):
        return nn.functional.conv2d(
            r, layer.weight.abs(), None, layer.stride, layer.padding, layer.dilation, layer.groups
        )
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        assert layer.running_var is not None
        scale = torch.rsqrt(layer.running_var + layer.eps)
        if layer.weight is not None:
            scale = scale * layer.weight
        return r * scale.abs().view(1, -1, *([1] * (r.dim() - 2)))
    # Normalize (1 / std > 0) and the maps in _NONNEGATIVE: W >= 0 elementwise
    return layer(r) - layer(torch.zeros_like(r))


def ibp(
    model: nn.Module, x: Tensor, threat: ThreatModel, *, eps: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Interval bounds ``(lower, upper)`` on ``model``'s outputs over the threat set.

    Shape: ``x: (B, *)``, ``eps``: optional ``(B,)`` per-sample radii -> two ``(B, C)``.
    """
    lo, hi = input_box(x, threat, eps)
    with torch.no_grad():
        for step in chain(model):
            if step.kind == "relu":
                lo, hi = lo.clamp(min=0), hi.clamp(min=0)
            else:
                mid, rad = (hi + lo) / 2, (hi - lo) / 2
                centre, spread = step.layer(mid), _abs_apply(step.layer, rad)
                lo, hi = centre - spread, centre + spread
    return lo, hi


# ---------------------------------------------------------------------------------------------
# CROWN


class _Crown:
    """Backward bound propagation through one model for one batch and threat set."""

    def __init__(self, model: nn.Module, x: Tensor, threat: ThreatModel, eps: Tensor,
                 chunk: int) -> None:  # fmt: skip
        self.steps = chain(model)
        self.x, self.threat, self.eps, self.chunk = x, threat, eps, chunk
        self.lo, self.hi = input_box(x, threat, eps)
        # each affine step's transpose (vjp at 0: the maps are affine) and its bias term f(0)
        self.vjps: list[object] = []
        self.biases: list[Tensor | None] = []
        self.shapes: list[torch.Size] = []  # output shape of each step, batch included
        self.in_shapes: list[torch.Size] = []
        h = torch.zeros_like(x)
        for step in self.steps:
            self.in_shapes.append(h.shape)
            if step.kind == "affine":
                out, vjp_fn = torch.func.vjp(step.layer, torch.zeros_like(h))[:2]
                self.vjps.append(vjp_fn)
                self.biases.append(out.detach())
                h = step.layer(h)
            else:
                self.vjps.append(None)
                self.biases.append(None)
            self.shapes.append(h.shape)
        #: pre-activation bounds of each ReLU step, filled in order
        self.pre: dict[int, tuple[Tensor, Tensor]] = {}

    def lower(self, a: Tensor, upto: int) -> Tensor:
        """Lower bound of ``a · h`` where ``h`` is the output of step ``upto - 1`` (the input
        when ``upto == 0``) over the threat set.

        Shape: ``a: (K, B, *h)`` -> ``(K, B)``.
        """
        const = torch.zeros(a.shape[:2], dtype=a.dtype, device=a.device)
        for j in range(upto - 1, -1, -1):
            step = self.steps[j]
            if step.kind == "affine":
                bias = self.biases[j]
                assert bias is not None
                const = const + (a * bias).flatten(2).sum(dim=2)
                a = self._transpose(j, a)
            else:
                lo, hi = self.pre[j]
                unstable = (lo < 0) & (hi > 0)
                up_slope = torch.where(unstable, hi / (hi - lo).clamp(min=1e-12),
                                       (lo >= 0).to(a.dtype))  # fmt: skip
                up_bias = torch.where(unstable, -up_slope * lo, torch.zeros_like(lo))
                # CROWN's adaptive lower line: slope 1 where the neuron is more positive
                low_slope = torch.where(unstable, (hi >= -lo).to(a.dtype), (lo >= 0).to(a.dtype))
                pos, neg = a.clamp(min=0), a.clamp(max=0)
                const = const + (neg * up_bias).flatten(2).sum(dim=2)
                a = pos * low_slope + neg * up_slope
        return const + self._input_bound(a)

    def _transpose(self, j: int, a: Tensor) -> Tensor:
        """``a · W_j`` for affine step ``j``: a matmul, reshape or scaling where the layer is one
        of the common kinds, else the layer's vjp (exact for every affine layer)."""
        from advlab.models.zoo import Normalize

        layer = self.steps[j].layer
        if isinstance(layer, nn.Linear) and a.dim() == 3:
            return a @ layer.weight
        if isinstance(layer, nn.Flatten) and layer.start_dim == 1 and layer.end_dim == -1:
            return a.reshape(a.shape[0], *self.in_shapes[j])
        if isinstance(layer, Normalize):
            return a / layer.std
        if isinstance(layer, (nn.Identity, nn.Dropout)):
            return a
        vjp_fn: Any = self.vjps[j]
        return torch.func.vmap(vjp_fn)(a)[0]

    def _input_bound(self, a: Tensor) -> Tensor:
        """min over the threat set of ``a · x'`` ``(K, B)``."""
        flat = a.flatten(2)
        box = (a.clamp(min=0) * self.lo + a.clamp(max=0) * self.hi).flatten(2).sum(dim=2)
        if self.threat.norm == "linf":
            return box
        centre = (flat * self.x.flatten(1)).sum(dim=2)
        dual = flat.norm(dim=2) if self.threat.norm == "l2" else flat.abs().amax(dim=2)
        return torch.maximum(box, centre - self.eps * dual)

    def bounds_of(self, upto: int) -> tuple[Tensor, Tensor]:
        """Elementwise bounds of the output of step ``upto - 1``, in chunks of neurons."""
        shape = self.shapes[upto - 1]
        b, n = shape[0], int(torch.Size(shape[1:]).numel())
        lows, highs = [], []
        for start in range(0, n, self.chunk):
            k = min(self.chunk, n - start)
            eye = torch.zeros(k, b, n, dtype=self.x.dtype, device=self.x.device)
            eye[torch.arange(k), :, start + torch.arange(k)] = 1.0
            a = eye.view(k, *shape)
            lows.append(self.lower(a, upto))
            highs.append(-self.lower(-a, upto))
        lo = torch.cat(lows).T.reshape(shape)
        hi = torch.cat(highs).T.reshape(shape)
        return lo, hi

    def run(self, spec: Tensor) -> Tensor:
        """Lower bounds of ``spec · output`` ``(K, B)``, computing pre-activation bounds first."""
        for j, step in enumerate(self.steps):
            if step.kind == "relu":
                self.pre[j] = self.bounds_of(j)
        return self.lower(spec, len(self.steps))


def margin_spec(y: Tensor, num_classes: int) -> Tensor:
    """``(C, B, C)`` rows ``e_y - e_j`` for every class ``j`` (the row ``j = y`` is zero)."""
    b = y.shape[0]
    spec = torch.zeros(num_classes, b, num_classes, device=y.device)
    rows = torch.arange(b, device=y.device)
    spec[:, rows, y] = 1.0
    spec[torch.arange(num_classes, device=y.device)[:, None], rows[None, :],
         torch.arange(num_classes, device=y.device)[:, None].expand(num_classes, b)] -= 1.0  # fmt: skip
    return spec


def margin_bounds(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    *,
    method: str = "crown",
    eps: Tensor | None = None,
    chunk: int = 1024,
) -> Tensor:
    """Certified lower bounds on the margins ``z_y - z_j`` over the threat set.

    Args:
        model: a plain stack of supported layers (see :func:`chain`), in eval mode.
        x, y: inputs in the box and their labels (or the predicted classes).
        threat: the threat set (norm, radius, box).
        method: ``"ibp"`` or ``"crown"`` (CROWN with CROWN intermediate bounds).
        eps: optional per-sample radii ``(B,)`` replacing ``threat.eps``.
        chunk: neurons bounded at once for intermediate bounds (memory).

    Shape:
        ``x: (B, *)``, ``y: (B,)`` -> ``(B, C)``, ``+inf`` in column ``y``.

    Returns:
        The bounds; a sample is certified when every finite entry is ``> 0``.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    e = _eps(threat, x) if eps is None else eps
    if method == "ibp":
        lo, hi = ibp(model, x, threat, eps=e)
        out = lo.gather(1, y[:, None]) - hi
    else:
        with torch.no_grad():
            num_classes = model(x[:1]).shape[1]
            crown = _Crown(model, x, threat, e, chunk)
            out = crown.run(margin_spec(y, num_classes).to(x.dtype)).T
    return out.detach().scatter(1, y[:, None], float("inf"))


def certified_radius(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    *,
    method: str = "crown",
    steps: int = 15,
    hi: float | None = None,
) -> Tensor:
    """Per-sample certified radius by bisection on ε (CNN-Cert uses 15 steps).

    The result ``r`` is a radius at which the sample is certified (``0`` when it is not even
    certified at ``0``, i.e. misclassified); the search starts from ``[0, hi]`` with ``hi``
    defaulting to the box's width, and keeps the certified end.

    Shape: ``x: (B, *)``, ``y: (B,)`` -> ``(B,)``.
    """
    lo_e = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    top = threat.upper - threat.lower if hi is None else hi
    hi_e = torch.full_like(lo_e, float(top))
    ok0 = (margin_bounds(model, x, y, threat, method=method, eps=lo_e) > 0).all(dim=1)
    for _ in range(steps):
        mid = (lo_e + hi_e) / 2
        ok = (margin_bounds(model, x, y, threat, method=method, eps=mid) > 0).all(dim=1)
        lo_e = torch.where(ok, mid, lo_e)
        hi_e = torch.where(ok, hi_e, mid)
    return torch.where(ok0, lo_e, torch.zeros_like(lo_e))
