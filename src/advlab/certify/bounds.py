"""Sound bounds on a classifier's outputs over a threat set: interval bound propagation (IBP),
backward linear bound propagation (CROWN, the family CNN-Cert belongs to), CROWN-IBP, and CROWN
with optimized ReLU slopes (alpha-CROWN).

A model is read as a small **graph** of nodes (:func:`graph`): affine maps, activations,
max-pooling and residual additions. Affine maps are the layers that are affine in their input:
``Linear``, ``Conv2d`` (any stride, padding, dilation, groups), ``Flatten``, ``AvgPool2d``,
``BatchNorm`` in eval mode, advlab's ``Normalize``, ``Identity`` and ``Dropout`` in eval mode.
Activations are ``ReLU`` and the S-shaped ``Sigmoid``, ``Tanh`` and :class:`~advlab.models.Arctan`
that CNN-Cert handles; ``MaxPool2d`` gets a sound linear relaxation, and
:class:`~advlab.models.Residual` blocks add their branch to their input. Any other layer, and any
model that is not a (nested) ``nn.Sequential`` of these, raises a
:class:`~advlab.errors.ConfigError` naming it: no layer is ever skipped.

The input set is the threat model's ball around ``x`` intersected with the input box. For L∞
that set is a box and the linear bound over it is exact; for L2 and L1 the bound is the larger
(tighter) of the ball's dual-norm bound and the bound over the box hull, both sound.

Every bound is differentiable in the model's weights (no ``no_grad`` inside), so the certified
training recipes train through them.

Reference:
    Gowal et al. 2018, "On the Effectiveness of Interval Bound Propagation for Training
    Verifiably Robust Models"; Zhang et al. 2018, "Efficient Neural Network Robustness
    Certification with General Activation Functions" (CROWN); Boopathy et al. 2019, "CNN-Cert";
    Zhang et al. 2020, "Towards Stable and Efficient Training of Verifiably Robust Neural
    Networks" (CROWN-IBP); Xu et al. 2021, "Fast and Complete" (optimized slopes, alpha-CROWN).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advlab.errors import ConfigError
from advlab.threat import ThreatModel

METHODS = ("ibp", "crown-ibp", "crown", "alpha-crown")
#: elements of one backward-bound tensor per chunk of neurons (about 128 MB in float32)
CHUNK_ELEMENTS = 2**25


@dataclass
class Node:
    """One node of the bound graph: the input, an affine layer, an activation, a max-pool or a
    residual addition; ``inputs`` index earlier nodes."""

    kind: str  # "input", "affine", "relu", "act", "maxpool" or "add"
    inputs: tuple[int, ...]
    layer: nn.Module | None
    name: str


#: affine layers that act on each coordinate alone or only reshape (with advlab's Normalize):
#: IBP through them is exact
_ELEMENTWISE: tuple[type[nn.Module], ...] = (nn.Flatten, nn.BatchNorm1d, nn.BatchNorm2d,
                                             nn.Identity, nn.Dropout)  # fmt: skip


def _affine_types() -> tuple[type[nn.Module], ...]:
    from advlab.models.zoo import Normalize

    return (nn.Linear, nn.Conv2d, nn.Flatten, nn.AvgPool2d, nn.BatchNorm1d, nn.BatchNorm2d,
            Normalize, nn.Identity, nn.Dropout)  # fmt: skip


def _act_types() -> tuple[type[nn.Module], ...]:
    from advlab.models.zoo import Arctan

    return (nn.Sigmoid, nn.Tanh, Arctan)


SUPPORTED = ("Linear, Conv2d, Flatten, AvgPool2d, BatchNorm (eval), Normalize, Identity, Dropout, "
             "ReLU, Sigmoid, Tanh, Arctan, MaxPool2d and Residual, in an nn.Sequential")  # fmt: skip


def graph(model: nn.Module) -> list[Node]:
    """``model`` as a list of nodes in execution order (node 0 is the input).

    Raises:
        ConfigError: a layer that is not supported (named, with its position), a model that is
            not an ``nn.Sequential``, or a BatchNorm/Dropout layer in training mode.
    """
    from advlab.models.zoo import Residual

    nodes = [Node("input", (), None, "input")]
    affine, acts = _affine_types(), _act_types()

    def walk(module: nn.Sequential, prefix: str, last: int) -> int:
        for i, layer in enumerate(module):
            name = f"{prefix}{i} ({type(layer).__name__})"
            if isinstance(layer, nn.Sequential):
                last = walk(layer, f"{prefix}{i}.", last)
                continue
            if isinstance(layer, Residual):
                branch = walk(layer.body, f"{prefix}{i}.body.", last)
                nodes.append(Node("add", (last, branch), layer, name))
            elif isinstance(layer, nn.ReLU):
                nodes.append(Node("relu", (last,), layer, name))
            elif isinstance(layer, acts):
                nodes.append(Node("act", (last,), layer, name))
            elif isinstance(layer, nn.MaxPool2d):
                if layer.ceil_mode or layer.return_indices:
                    raise ConfigError(f"cannot bound layer {name}: use ceil_mode=False and "
                                      "return_indices=False")  # fmt: skip
                nodes.append(Node("maxpool", (last,), layer, name))
            elif isinstance(layer, affine):
                if layer.training and isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d,
                                                         nn.Dropout)):  # fmt: skip
                    raise ConfigError(
                        f"layer {name} is in training mode; call model.eval() before certifying"
                    )
                nodes.append(Node("affine", (last,), layer, name))
            else:
                raise ConfigError(
                    f"cannot bound layer {name}: supported are {SUPPORTED}; replace it or "
                    "certify a model without it"
                )
            last = len(nodes) - 1
        return last

    if not isinstance(model, nn.Sequential):
        raise ConfigError(
            f"cannot bound a {type(model).__name__}: certification reads the model as an "
            f"nn.Sequential of {SUPPORTED} (wrap skip connections in advlab.models.Residual)"
        )
    walk(model, "", 0)
    return nodes


def _eps(threat: ThreatModel, x: Tensor, eps: Tensor | float | None) -> Tensor:
    """Per-sample radius ``(B,)``."""
    e = threat.eps if eps is None else eps
    return torch.as_tensor(e, dtype=x.dtype, device=x.device).expand(x.shape[0])


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def input_box(x: Tensor, threat: ThreatModel, eps: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Elementwise bounds of the threat set: the ball's box hull intersected with the input box.

    Shape: ``x: (B, *)``; ``eps``: ``(B,)`` radii overriding ``threat.eps``.
    """
    e = _bcast(_eps(threat, x, eps), x)
    return (x - e).clamp(min=threat.lower), (x + e).clamp(max=threat.upper)


# ---------------------------------------------------------------------------------------------
# activations: values, derivatives and their linear relaxations


def _act_fns(layer: nn.Module) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """``(f, f')`` of an S-shaped activation (convex below 0, concave above, increasing)."""
    if isinstance(layer, nn.Sigmoid):
        return torch.sigmoid, lambda t: torch.sigmoid(t) * (1 - torch.sigmoid(t))
    if isinstance(layer, nn.Tanh):
        return torch.tanh, lambda t: 1 - torch.tanh(t) ** 2
    return torch.atan, lambda t: 1 / (1 + t * t)


def _tangent_through(f: Callable[[Tensor], Tensor], df: Callable[[Tensor], Tensor], p: Tensor,
                     lo: Tensor, hi: Tensor, keep_high: bool) -> Tensor:  # fmt: skip
    """A tangent point ``d`` in ``[lo, hi]`` whose tangent passes through ``(p, f(p))``, by
    bisection on the monotone gap; returns the end of the final bracket on the sound side."""
    for _ in range(24):
        mid = (lo + hi) / 2
        gap = f(mid) + df(mid) * (p - mid) - f(p)  # increasing in mid on both halves
        above = gap >= 0
        hi, lo = torch.where(above, mid, hi), torch.where(above, lo, mid)
    return hi if keep_high else lo


def act_relaxation(layer: nn.Module, lo: Tensor, hi: Tensor) -> tuple[Tensor, ...]:
    """Linear bounds ``al x + bl <= f(x) <= au x + bu`` on ``[lo, hi]`` for an S-shaped ``f``
    (CROWN's general-activation rules: chords where convex or concave, tangents through the far
    end where the interval straddles 0). Returns ``(al, bl, au, bu)``."""
    f, df = _act_fns(layer)
    lo, hi = lo.detach(), hi.detach()
    width = hi - lo
    flat = width < 1e-6
    mid = (lo + hi) / 2
    chord = torch.where(flat, df(mid), (f(hi) - f(lo)) / width.clamp(min=1e-6))
    tan = df(mid)
    # wholly convex (hi <= 0): chord above, tangent at the midpoint below; concave: the reverse
    au = torch.where(hi <= 0, chord, tan)
    bu = torch.where(hi <= 0, f(lo) - chord * lo, f(mid) - tan * mid)
    al = torch.where(hi <= 0, tan, chord)
    bl = torch.where(hi <= 0, f(mid) - tan * mid, f(lo) - chord * lo)
    cross = (lo < 0) & (hi > 0) & ~flat
    if bool(cross.any()):
        # upper: the tangent at d in [0, hi] passing through (lo, f(lo)); the chord if even
        # the tangent at hi passes below that point (then the chord lies above f)
        zero = torch.zeros_like(lo)
        d_up = _tangent_through(f, df, lo, zero, hi, keep_high=True)
        use_chord_up = f(hi) + df(hi) * (lo - hi) < f(lo)
        s_up = torch.where(use_chord_up, chord, df(d_up))
        b_up = torch.where(use_chord_up, f(lo) - chord * lo, f(d_up) - df(d_up) * d_up)
        # lower: the tangent at d in [lo, 0] passing through (hi, f(hi)), else the chord
        d_lo = _tangent_through(f, df, hi, lo, zero, keep_high=False)
        use_chord_lo = f(lo) + df(lo) * (hi - lo) > f(hi)
        s_lo = torch.where(use_chord_lo, chord, df(d_lo))
        b_lo = torch.where(use_chord_lo, f(lo) - chord * lo, f(d_lo) - df(d_lo) * d_lo)
        au, bu = torch.where(cross, s_up, au), torch.where(cross, b_up, bu)
        al, bl = torch.where(cross, s_lo, al), torch.where(cross, b_lo, bl)
    return al, bl, au, bu


def relu_relaxation(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """CROWN's ReLU relaxation: ``(unstable, upper slope, upper intercept, adaptive lower
    slope)``; the lower line is ``y >= s x`` with ``s = 1`` where ``hi >= -lo``, else ``0``."""
    unstable = (lo < 0) & (hi > 0)
    up = torch.where(unstable, hi / (hi - lo).clamp(min=1e-12), (lo >= 0).to(lo.dtype))
    up_bias = torch.where(unstable, -up * lo, torch.zeros_like(lo))
    low = torch.where(unstable, (hi >= -lo).to(lo.dtype), (lo >= 0).to(lo.dtype))
    return unstable, up, up_bias, low


@dataclass
class _Pool:
    """A max-pool's relaxation on its input box: ``y >= x[j]`` and ``y <= s x[j] + c`` where
    ``j`` is the window's element with the largest lower bound."""

    index: Tensor  # (B, C, L) flat input position of j in each output window
    slope: Tensor  # (B, C, L)
    const: Tensor  # (B, C, L)
    in_shape: torch.Size


def pool_relaxation(layer: nn.MaxPool2d, lo: Tensor, hi: Tensor) -> _Pool:
    """Sound linear bounds of ``max`` over each window. With ``j`` the element of largest lower
    bound ``l`` and ``u_o`` the largest upper bound of the others, ``max <= max(x_j, u_o)``,
    whose tightest linear upper bound on ``[l, u_j]`` is the chord: exact ``x_j`` when
    ``u_o <= l`` (``j`` dominates), the constant ``u_o`` when ``u_o >= u_j``."""
    b, c, h, w = lo.shape
    k, st, pad, dil = (nn.modules.utils._pair(v) for v in
                       (layer.kernel_size, layer.stride or layer.kernel_size, layer.padding,
                        layer.dilation))  # fmt: skip

    def windows(t: Tensor, fill: float) -> Tensor:
        t = F.pad(t, (pad[1], pad[1], pad[0], pad[0]), value=fill)
        n = t.shape[0]
        return F.unfold(t.reshape(n * c, 1, *t.shape[2:]), k, dil, 0, st).view(
            n, c, k[0] * k[1], -1
        )

    lo_w, hi_w = windows(lo.detach(), -math.inf), windows(hi.detach(), -math.inf)
    pos = torch.arange(h * w, dtype=lo.dtype, device=lo.device).view(1, 1, h, w)
    pos_w = windows(pos.expand(1, c, h, w), -1.0)
    l_j, arg = lo_w.max(dim=2)
    u_j = hi_w.gather(2, arg[:, :, None]).squeeze(2)
    u_o = hi_w.scatter(2, arg[:, :, None], -math.inf).amax(dim=2)
    index = pos_w.expand(b, -1, -1, -1).gather(2, arg[:, :, None]).squeeze(2).long()
    dominant, flat = u_o <= l_j, u_o >= u_j
    slope = ((u_j - u_o) / (u_j - l_j).clamp(min=1e-12)).clamp(0, 1)
    slope = torch.where(dominant, torch.ones_like(slope), torch.where(flat, 0.0, slope))
    const = torch.where(dominant, torch.zeros_like(u_o), torch.where(flat, u_o, u_o - slope * l_j))
    return _Pool(index, slope, const, lo.shape)


# ---------------------------------------------------------------------------------------------
# affine layers: bias, |W| r and the transpose


def _abs_apply(layer: nn.Module, r: Tensor) -> Tensor:
    """``|W| r`` for affine ``layer`` ``f(v) = W v + b`` and ``r >= 0``."""
    if isinstance(layer, nn.Linear):
        return r @ layer.weight.abs().T
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(r, layer.weight.abs(), None, layer.stride, layer.padding, layer.dilation,
                        layer.groups)  # fmt: skip
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return r * _bn_scale(layer, r).abs()
    # Normalize (1 / std > 0), Flatten, AvgPool2d, Identity, Dropout: W >= 0 elementwise
    return layer(r) - layer(torch.zeros_like(r))


def _bn_scale(layer: nn.Module, like: Tensor) -> Tensor:
    assert isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)) and layer.running_var is not None
    scale = torch.rsqrt(layer.running_var + layer.eps)
    if layer.weight is not None:
        scale = scale * layer.weight
    return scale.view(-1, *([1] * (like.dim() - 2)))


def _transpose(layer: nn.Module, a: Tensor, in_shape: torch.Size) -> Tensor:
    """``a · W`` for an affine layer with input shape ``in_shape`` (batch included).

    Shape: ``a: (K, B, *out)`` -> ``(K, B, *in)``.
    """
    from advlab.models.zoo import Normalize

    k, b = a.shape[:2]
    if isinstance(layer, nn.Linear):
        return a @ layer.weight
    if isinstance(layer, nn.Conv2d) and isinstance(layer.padding, tuple):
        out = a.reshape(k * b, *a.shape[2:])
        if not out.requires_grad:  # channels-last: several times faster for thin convolutions
            out = out.contiguous(memory_format=torch.channels_last)
        extra = [in_shape[2 + d] - ((out.shape[2 + d] - 1) * layer.stride[d]
                 - 2 * layer.padding[d] + layer.dilation[d] * (layer.kernel_size[d] - 1) + 1)
                 for d in range(2)]  # fmt: skip
        t = F.conv_transpose2d(out, layer.weight, None, layer.stride, layer.padding,
                               tuple(extra), layer.groups, layer.dilation)  # fmt: skip
        return t.contiguous().view(k, b, *t.shape[1:])
    if isinstance(layer, nn.Flatten):
        return a.reshape(k, b, *in_shape[1:])
    if isinstance(layer, Normalize):
        return a / layer.std
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return a * _bn_scale(layer, a.flatten(0, 1))
    if isinstance(layer, (nn.Identity, nn.Dropout)):
        return a
    # any other affine layer (AvgPool2d, Conv2d with string padding): its exact vjp at 0
    zero = torch.zeros(k * b, *in_shape[1:], dtype=a.dtype, device=a.device)
    vjp_fn = torch.func.vjp(layer, zero)[1]
    return vjp_fn(a.reshape(k * b, *a.shape[2:]))[0].view(k, b, *in_shape[1:])


# ---------------------------------------------------------------------------------------------
# the bound engine


class Bounder:
    """Bounds on the nodes of one model for one batch and threat set.

    ``intermediate`` chooses how the pre-activation bounds are found: ``"ibp"`` (CROWN-IBP) or
    ``"crown"`` (each intersected with IBP's, both being sound). ``alphas`` (optional) maps a
    ReLU node to lower slopes in ``[0, 1]`` for its unstable neurons, shaped like the
    backward-bound tensor at that node (``(K, B, *shape)``) or broadcastable to it.
    """

    def __init__(self, model: nn.Module, x: Tensor, threat: ThreatModel, eps: Tensor,
                 intermediate: str = "crown", chunk: int | None = None) -> None:  # fmt: skip
        self.nodes = graph(model)
        self.x, self.threat, self.eps = x, threat, eps
        self.intermediate = intermediate
        self.lo, self.hi = input_box(x, threat, eps)
        self.mid, self.rad = (self.hi + self.lo) / 2, (self.hi - self.lo) / 2
        self.shapes: list[torch.Size] = []
        self.biases: list[Tensor | None] = []  # f(0) of each affine node
        self.linear: list[bool] = []  # the node is an affine function of the input
        # how many affine layers that mix coordinates separate the node from the input along a
        # purely affine path: with at most one, IBP over an L∞ box is already exact
        from advlab.models.zoo import Normalize

        elementwise = (*_ELEMENTWISE, Normalize)
        mixing: list[int] = []
        probe: list[Tensor] = []  # each node's value at a zero input, for shapes and biases
        for node in self.nodes:
            mixing.append(0 if node.kind == "input" else 2 if node.kind != "affine" else
                          mixing[node.inputs[0]] + (not isinstance(node.layer, elementwise)))  # fmt: skip
            bias, lin = None, False
            if node.kind == "input":
                h, lin = torch.zeros_like(x[:1]), True
            elif node.kind == "add":
                h = probe[node.inputs[0]] + probe[node.inputs[1]]
                lin = self.linear[node.inputs[0]] and self.linear[node.inputs[1]]
            else:
                assert node.layer is not None
                h = node.layer(probe[node.inputs[0]])
                if node.kind == "affine":
                    bias, lin = (
                        node.layer(torch.zeros_like(probe[node.inputs[0]])),
                        self.linear[node.inputs[0]],
                    )
            probe.append(h)
            self.biases.append(bias)
            self.linear.append(lin)
            self.shapes.append(torch.Size((x.shape[0], *h.shape[1:])))
        self.exact_ibp = [lin and m <= 1 and threat.norm == "linf"
                          for lin, m in zip(self.linear, mixing, strict=True)]  # fmt: skip
        # a bias that is zero (Flatten, a Normalize without mean) costs nothing to skip
        self.biases = [None if b is None or not bool(b.detach().any()) else b
                       for b in self.biases]  # fmt: skip
        # a Linear layer fed by affine layers only (Normalize, Flatten, ...) folded into one
        # matrix on the input, so passes through it skip the layers before it
        self.direct: dict[int, tuple[Tensor, Tensor]] = {}
        for i, node in enumerate(self.nodes):
            layer = node.layer
            if isinstance(layer, nn.Linear) and self.linear[node.inputs[0]] and node.inputs[0]:
                rows = layer.weight[:, None, :]
                a_in, const = self.backward(rows, node.inputs[0], torch.zeros_like(rows[:, :, 0]))
                bias = const[:, 0] if layer.bias is None else const[:, 0] + layer.bias
                self.direct[i] = (a_in.flatten(1), bias)
        largest = max(s[1:].numel() for s in self.shapes)
        self.chunk = chunk or max(1, CHUNK_ELEMENTS // (x.shape[0] * largest))
        self.box: dict[int, tuple[Tensor, Tensor]] = {}  # bounds of nodes feeding nonlinearities
        self.tight: set[int] = set()  # nodes whose CROWN bounds are already in ``box``
        self.pools: dict[int, _Pool] = {}
        #: optimized lower slopes by (start node, ReLU node, upper pass), see :meth:`backward`
        self.alphas: dict[tuple[int | None, int, bool], Tensor] = {}
        self.consumers: dict[int, set[str]] = {}
        for node in self.nodes:
            for j in node.inputs:
                self.consumers.setdefault(j, set()).add(node.kind)

    # ---- IBP ---------------------------------------------------------------------------------
    def ibp(self) -> tuple[Tensor, Tensor]:
        """Interval bounds of every node (stored for those feeding nonlinearities); returns the
        output's."""
        need = self._needs_bounds()
        boxes: list[tuple[Tensor, Tensor]] = []
        for i, node in enumerate(self.nodes):
            if node.kind == "input":
                lo, hi = self.lo, self.hi
            elif node.kind == "add":
                (l1, h1), (l2, h2) = boxes[node.inputs[0]], boxes[node.inputs[1]]
                lo, hi = l1 + l2, h1 + h2
            else:
                lo, hi = boxes[node.inputs[0]]
                layer = node.layer
                if node.kind == "affine":
                    assert layer is not None
                    centre, spread = layer((hi + lo) / 2), _abs_apply(layer, (hi - lo) / 2)
                    lo, hi = centre - spread, centre + spread
                elif node.kind == "relu":
                    lo, hi = lo.clamp(min=0), hi.clamp(min=0)
                else:  # monotone increasing: activations and max-pooling
                    assert layer is not None
                    lo, hi = layer(lo), layer(hi)
            boxes.append((lo, hi))
            if i in need:
                self.box[i] = (lo, hi)
        return boxes[-1]

    def _needs_bounds(self) -> list[int]:
        """Nodes whose bounds the relaxations read: the inputs of nonlinear nodes."""
        return sorted({n.inputs[0] for n in self.nodes if n.kind in ("relu", "act", "maxpool")})

    # ---- backward propagation ------------------------------------------------------------
    def backward(self, a: Tensor, node: int, const: Tensor | None = None,
                 upper: bool = False, start: int | None = None) -> tuple[Tensor, Tensor]:  # fmt: skip
        """Propagate ``a · h_node`` back to the input: returns ``(a_in, const)`` such that
        ``a · h_node >= a_in · x' + const`` over the threat set (``<=`` with ``upper``).
        ``start`` names the node whose bound this pass computes, to pick optimized slopes
        (``alphas[(start, relu node, upper)]``).

        Shape: ``a: (K, B, *shape[node])`` -> ``(K, B, *x)``, ``(K, B)``.
        """
        if const is None:
            const = torch.zeros(a.shape[:2], dtype=a.dtype, device=a.device)
        pending: dict[int, Tensor] = {node: a}
        for i in range(node, 0, -1):
            if i not in pending:
                continue
            a = pending.pop(i)
            n = self.nodes[i]
            if i in self.direct:
                weight, folded = self.direct[i]
                const = const + a @ folded
                self._give(pending, 0, (a @ weight).view(*a.shape[:2], *self.x.shape[1:]))
                continue
            if n.kind == "affine":
                bias = self.biases[i]
                assert n.layer is not None
                if bias is not None:
                    const = const + a.flatten(2) @ bias.flatten()
                a = _transpose(n.layer, a, self.shapes[n.inputs[0]])
            elif n.kind == "add":
                self._give(pending, n.inputs[0], a)
            elif n.kind == "relu":
                a, const = self._relu_back(i, a, const, upper, self.alphas.get((start, i, upper)))
            elif n.kind == "act":
                a, const = self._act_back(i, a, const, upper)
            else:
                a, const = self._pool_back(i, a, const, upper)
            self._give(pending, n.inputs[-1], a)
        return pending.pop(0), const

    @staticmethod
    def _give(pending: dict[int, Tensor], j: int, a: Tensor) -> None:
        pending[j] = pending[j] + a if j in pending else a

    def _split(self, a: Tensor, upper: bool) -> tuple[Tensor, Tensor]:
        """``(part bounded by the lower line, part bounded by the upper line)``."""
        pos, neg = a.clamp(min=0), a.clamp(max=0)
        return (neg, pos) if upper else (pos, neg)

    def _relu_back(self, i: int, a: Tensor, const: Tensor, upper: bool,
                   alpha: Tensor | None) -> tuple[Tensor, Tensor]:  # fmt: skip
        lo, hi = self.bounds(self.nodes[i].inputs[0])
        unstable, up, up_bias, low = relu_relaxation(lo, hi)
        if alpha is not None:
            low = torch.where(unstable, alpha.clamp(0, 1), low)
        by_low, by_up = self._split(a, upper)
        const = const + (by_up * up_bias).flatten(2).sum(dim=2)
        return by_low * low + by_up * up, const

    def _act_back(self, i: int, a: Tensor, const: Tensor, upper: bool) -> tuple[Tensor, Tensor]:
        layer = self.nodes[i].layer
        assert layer is not None
        al, bl, au, bu = act_relaxation(layer, *self.bounds(self.nodes[i].inputs[0]))
        by_low, by_up = self._split(a, upper)
        const = const + (by_low * bl + by_up * bu).flatten(2).sum(dim=2)
        return by_low * al + by_up * au, const

    def _pool_back(self, i: int, a: Tensor, const: Tensor, upper: bool) -> tuple[Tensor, Tensor]:
        if i not in self.pools:
            layer = self.nodes[i].layer
            assert isinstance(layer, nn.MaxPool2d)
            self.pools[i] = pool_relaxation(layer, *self.bounds(self.nodes[i].inputs[0]))
        p = self.pools[i]
        k, b, c = a.shape[:3]
        flat = a.reshape(k, b, c, -1)
        by_low, by_up = self._split(flat, upper)
        const = const + (by_up * p.const).flatten(2).sum(dim=2)
        coef = by_low + by_up * p.slope
        out = torch.zeros(k, b, c, p.in_shape[2] * p.in_shape[3], dtype=a.dtype, device=a.device)
        out = out.scatter_add(3, p.index.expand(k, -1, -1, -1), coef)
        return out.view(k, b, *p.in_shape[1:]), const

    def input_bounds(self, a: Tensor, const: Tensor) -> tuple[Tensor, Tensor]:
        """``(min, max)`` over the threat set of ``a · x' + const``, ``(K, B)`` each."""
        flat = a.flatten(2)
        if flat.stride(1) == 0:  # the same rows for every sample (a first layer's weights)
            rows = flat[:, 0]
            centre = (self.mid.flatten(1) @ rows.T).T
            spread = (self.rad.flatten(1) @ rows.abs().T).T
        else:
            centre = torch.einsum("kbn,bn->kb", flat, self.mid.flatten(1))
            spread = torch.einsum("kbn,bn->kb", flat.abs(), self.rad.flatten(1))
        low, high = centre - spread, centre + spread
        if self.threat.norm != "linf":
            at_x = torch.einsum("kbn,bn->kb", flat, self.x.flatten(1))
            dual = flat.norm(dim=2) if self.threat.norm == "l2" else flat.abs().amax(dim=2)
            low = torch.maximum(low, at_x - self.eps * dual)
            high = torch.minimum(high, at_x + self.eps * dual)
        return const + low, const + high

    def bounds(self, j: int) -> tuple[Tensor, Tensor]:
        """Elementwise bounds of node ``j`` (computed once, IBP's intersected with CROWN's)."""
        if j not in self.box:
            self.ibp()
        if self.intermediate == "ibp" or j in self.tight or self.exact_ibp[j]:
            return self.box[j]
        lo_ibp, hi_ibp = self.box[j]
        lo, hi = self._crown_bounds(j)
        self.box[j] = (torch.maximum(lo, lo_ibp), torch.minimum(hi, hi_ibp))
        self.tight.add(j)
        return self.box[j]

    def rows(self, j: int) -> Tensor:
        """The neurons of node ``j`` whose CROWN bounds can matter: for a node that only feeds
        ReLUs, those unstable under the current bounds for some sample (a stable neuron's
        relaxation is exact already); otherwise all."""
        n = self.shapes[j][1:].numel()
        if self.consumers.get(j) == {"relu"} and j in self.box:
            lo, hi = self.box[j]
            return torch.nonzero(((lo < 0) & (hi > 0)).flatten(1).any(dim=0)).flatten()
        return torch.arange(n, device=self.x.device)

    def _crown_bounds(self, j: int, whole: bool = False) -> tuple[Tensor, Tensor]:
        """CROWN bounds of node ``j``'s neurons in :meth:`rows` (the others keep IBP's), in
        chunks of neurons (one chunk with ``whole``, for slope optimization)."""
        shape = self.shapes[j]
        b, n = shape[0], shape[1:].numel()
        node, layer = self.nodes[j], self.nodes[j].layer
        lo_all, hi_all = (t.reshape(b, n) for t in self.box[j])
        idx = self.rows(j)
        if len(idx) == 0:
            return lo_all.view(shape), hi_all.view(shape)
        chunk = len(idx) if whole else self.chunk
        lows, highs = [], []
        for part in idx.split(chunk):
            k = len(part)
            if j in self.direct:  # rows of the folded matrix, the same for every sample
                weight, bias = self.direct[j]
                a, const, src = (
                    weight[part, None, :].expand(k, b, -1),
                    bias[part, None].expand(k, b),
                    0,
                )
            elif node.kind == "affine" and isinstance(layer, nn.Linear) and len(shape) == 2:
                # start from the weight rows instead of an identity pushed through the layer
                a, src = layer.weight[part, None, :].expand(k, b, -1), node.inputs[0]
                const = (torch.zeros(k, b, dtype=self.x.dtype, device=self.x.device)
                         if layer.bias is None else layer.bias[part, None].expand(k, b))  # fmt: skip
            else:
                eye = torch.zeros(k, b, n, dtype=self.x.dtype, device=self.x.device)
                eye[torch.arange(k), :, part] = 1.0
                a, const, src = eye.view(k, *shape), None, j
            if self.linear[j]:  # no relaxation on the way: one pass gives both ends
                lo, hi = self.input_bounds(*self.backward(a, src, const, start=j))
            else:
                lo = self.input_bounds(*self.backward(a, src, const, start=j))[0]
                hi = self.input_bounds(*self.backward(a, src, const, True, start=j))[1]
            lows.append(lo)
            highs.append(hi)
        rows = idx[:, None].expand(-1, b)
        lo_all = lo_all.T.scatter(0, rows, torch.cat(lows)).T
        hi_all = hi_all.T.scatter(0, rows, torch.cat(highs)).T
        return lo_all.reshape(shape), hi_all.reshape(shape)

    def lower(self, spec: Tensor) -> Tensor:
        """Lower bounds of ``spec · output`` over the threat set, ``(K, B)``."""
        out = len(self.nodes) - 1
        a_in, const = self.backward(spec, out, start=out)
        return self.input_bounds(a_in, const)[0]


# ---------------------------------------------------------------------------------------------
# public functions


def ibp(
    model: nn.Module, x: Tensor, threat: ThreatModel, *, eps: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Interval bounds ``(lower, upper)`` on ``model``'s outputs over the threat set.

    Shape: ``x: (B, *)``, ``eps``: optional ``(B,)`` per-sample radii -> two ``(B, C)``.
    """
    return Bounder(model, x, threat, _eps(threat, x, eps), "ibp").ibp()


def margin_spec(y: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(C, B, C)`` rows ``e_y - e_j`` for every class ``j`` (the row ``j = y`` is zero)."""
    eye = torch.eye(num_classes, dtype=dtype, device=y.device)
    return eye[y][None, :, :] - eye[:, None, :]


def _check(x: Tensor, y: Tensor, threat: ThreatModel, eps: Tensor | None) -> None:
    if x.dim() < 2 or y.shape != (x.shape[0],):
        raise ConfigError(
            f"certification needs x of shape (B, ...) and y of shape (B,), got {tuple(x.shape)} "
            f"and {tuple(y.shape)}"
        )
    if not bool(torch.isfinite(x).all()):
        raise ConfigError("x contains NaN or infinite values; clean the inputs first")
    if bool((x < threat.lower).any() or (x > threat.upper).any()):
        raise ConfigError(
            f"x lies outside the input box [{threat.lower:g}, {threat.upper:g}]; scale it into "
            "the box or set the threat model's lower/upper"
        )
    if eps is not None and (eps.shape != (x.shape[0],) or bool((eps < 0).any())):
        raise ConfigError(f"eps must be (B,) radii >= 0, got shape {tuple(eps.shape)}")


def margin_bounds(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    *,
    method: str = "crown",
    eps: Tensor | None = None,
    chunk: int | None = None,
    alpha_steps: int = 20,
    alpha_lr: float = 0.1,
) -> Tensor:
    """Certified lower bounds on the margins ``z_y - z_j`` over the threat set.

    Args:
        model: an ``nn.Sequential`` of supported layers (see :func:`graph`), in eval mode.
        x, y: inputs in the box and their labels (or the predicted classes).
        threat: the threat set (norm, radius, box).
        method: ``"ibp"``; ``"crown-ibp"`` (a CROWN pass over IBP intermediate bounds);
            ``"crown"`` (CROWN intermediate bounds too, each intersected with IBP's); or
            ``"alpha-crown"`` (CROWN with the last pass's ReLU lower slopes optimized by
            projected gradient ascent; never looser than ``"crown"``).
        eps: optional per-sample radii ``(B,)`` replacing ``threat.eps``.
        chunk: neurons bounded at once for intermediate bounds (default: sized to memory).
        alpha_steps, alpha_lr: Adam steps and learning rate of the slope optimization.

    Shape:
        ``x: (B, *)``, ``y: (B,)`` -> ``(B, C)``, ``+inf`` in column ``y``.

    Returns:
        The bounds, differentiable in the weights for ``ibp``, ``crown-ibp`` and ``crown``; a
        sample is certified when every finite entry is ``> 0``.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    _check(x, y, threat, eps)
    e = _eps(threat, x, eps)
    inter = "ibp" if method in ("ibp", "crown-ibp") else "crown"
    if method == "alpha-crown":  # slopes are optimized; the weights are constants here
        with torch.no_grad():
            bounder = Bounder(model, x, threat, e, inter, chunk)
            spec = margin_spec(y, bounder.shapes[-1][1], x.dtype)
            out = bounder.lower(spec).T
        out = torch.maximum(out, _optimize_slopes(bounder, spec, alpha_steps, alpha_lr).T)
        return out.scatter(1, y[:, None], math.inf)
    bounder = Bounder(model, x, threat, e, inter, chunk)
    if method == "ibp":
        lo, hi = bounder.ibp()
        out = lo.gather(1, y[:, None]) - hi
    else:
        num_classes = bounder.shapes[-1][1]
        spec = margin_spec(y, num_classes, x.dtype)
        out = bounder.lower(spec).T
    return out.scatter(1, y[:, None], math.inf)


#: nodes with more neurons than this (times the batch) keep CROWN's intermediate bounds in
#: alpha-CROWN, whose slopes for them would take (neurons, batch, neurons) memory
ALPHA_ELEMENTS = 2**22


def _optimize_slopes(bounder: Bounder, spec: Tensor, steps: int, lr: float) -> Tensor:
    """alpha-CROWN: the lower slopes of unstable ReLUs become parameters in ``[0, 1]``, one per
    (bound being computed, ReLU neuron), tuned by Adam to maximize the sum of the final bounds;
    the intermediate bounds of small enough nodes are recomputed with their own slopes at every
    step (and intersected with CROWN's), so tighter intermediate bounds tighten the final ones.
    Every iterate is sound, so the elementwise best over the steps is returned."""
    nodes, out = bounder.nodes, len(bounder.nodes) - 1
    relus = [i for i, n in enumerate(nodes) if n.kind == "relu"]
    with torch.no_grad():
        for i in relus:
            bounder.bounds(nodes[i].inputs[0])
    fixed = {k: (lo.detach(), hi.detach()) for k, (lo, hi) in bounder.box.items()}
    bounder.box = dict(fixed)
    b = bounder.x.shape[0]
    starts = [
        j
        for j in sorted({nodes[i].inputs[0] for i in relus})
        if not bounder.linear[j]
        and len(bounder.rows(j)) * b * bounder.shapes[j][1:].numel() <= ALPHA_ELEMENTS
    ]

    def slopes(k: int, i: int) -> Tensor:
        lo, hi = fixed[nodes[i].inputs[0]]
        return (hi >= -lo).to(lo.dtype).expand(k, *lo.shape).clone().requires_grad_(True)

    params: dict[tuple[int | None, int, bool], Tensor] = {}
    for j in starts:
        k = len(bounder.rows(j))
        for i in relus:
            if i < j:
                params[(j, i, False)], params[(j, i, True)] = slopes(k, i), slopes(k, i)
    for i in relus:
        params[(out, i, False)] = slopes(spec.shape[0], i)
    opt = torch.optim.Adam(params.values(), lr=lr)
    best = torch.full(spec.shape[:2], -math.inf, dtype=spec.dtype, device=spec.device)
    bounder.alphas = params
    try:
        with torch.enable_grad():  # the caller may be in no_grad mode
            for step in range(steps + 1):
                bounder.box = dict(fixed)
                for j in starts:
                    lo, hi = bounder._crown_bounds(j, whole=True)
                    bounder.box[j] = (
                        torch.maximum(lo, fixed[j][0]),
                        torch.minimum(hi, fixed[j][1]),
                    )
                bound = bounder.lower(spec)
                best = torch.maximum(best, bound.detach())
                if step == steps:
                    break
                # gradients for the slopes only: the model's own .grad stays untouched
                grads = torch.autograd.grad(-bound.sum(), list(params.values()),
                                            allow_unused=True)  # fmt: skip
                for p, g in zip(params.values(), grads, strict=True):
                    p.grad = torch.zeros_like(p) if g is None else g  # unused: no unstable neuron
                opt.step()
                with torch.no_grad():
                    for p in params.values():
                        p.clamp_(0, 1)
    finally:
        bounder.alphas, bounder.box = {}, fixed
    return best


def certified_radius(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    *,
    method: str = "crown",
    steps: int = 15,
    hi: float | Tensor | None = None,
    target: Tensor | None = None,
    **options: int | float,
) -> Tensor:
    """Per-sample certified radius by bisection on ε (CNN-Cert uses 15 steps).

    The result ``r`` is a radius at which the sample is certified (``0`` when it is not even
    certified at ``0``, i.e. misclassified); the search starts from ``[0, hi]`` with ``hi``
    defaulting to the box's width (times ``sqrt(d)`` or ``d`` for L2 and L1; an attack's
    per-sample distance is a tighter start, the certified radius being below it), and keeps the
    certified end. With ``target``, only the margin against that class must stay positive (the
    targeted radius CNN-Cert reports). ``options`` go to :func:`margin_bounds`.

    Shape: ``x: (B, *)``, ``y: (B,)``, ``hi`` and ``target``: scalar or ``(B,)`` -> ``(B,)``.
    """
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    d = x[0].numel()
    width = threat.upper - threat.lower
    top = hi if hi is not None else width * {"linf": 1.0, "l2": math.sqrt(d), "l1": float(d)}[
        threat.norm]  # fmt: skip
    lo_e = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    hi_e = torch.as_tensor(top, dtype=x.dtype, device=x.device).expand_as(lo_e).clone()

    def certified(e: Tensor) -> Tensor:
        with torch.no_grad():
            m = margin_bounds(model, x, y, threat, method=method, eps=e, **options)  # type: ignore[arg-type]
        if target is not None:
            return (m.detach().gather(1, target[:, None]) > 0).squeeze(1)
        return (m.detach() > 0).all(dim=1)

    ok0 = certified(lo_e)
    for _ in range(steps):
        mid = (lo_e + hi_e) / 2
        ok = certified(mid)
        lo_e = torch.where(ok, mid, lo_e)
        hi_e = torch.where(ok, hi_e, mid)
    return torch.where(ok0, lo_e, torch.zeros_like(lo_e))


def certified(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    *,
    methods: tuple[str, ...] = ("ibp", "crown"),
    batch_size: int = 250,
    **options: int | float,
) -> Tensor:
    """Which samples are certified at ``threat.eps``: correctly classified and with every margin
    bound ``> 0`` under at least one of ``methods`` (each is sound, so the union is too).

    Shape: ``x: (B, *)``, ``y: (B,)`` -> ``(B,)`` bool. Batches of ``batch_size`` bound memory.
    """
    out = []
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        ok = torch.zeros(xb.shape[0], dtype=torch.bool, device=x.device)
        for method in methods:
            todo = ~ok
            if not bool(todo.any()):
                break
            with torch.no_grad():
                m = margin_bounds(model, xb[todo], yb[todo], threat, method=method, **options)  # type: ignore[arg-type]
            ok[todo] = (m.detach() > 0).all(dim=1)
        out.append(ok)
    return torch.cat(out)
