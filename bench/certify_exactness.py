"""Exactness of advlab's certified bounds against scipy on small ReLU networks.

For each model, image and target class ``j != y`` this measures lower bounds on the margin
``z_y - z_j`` over the L-inf ball intersected with the box [0, 1]:

* advlab's IBP, CROWN and alpha-CROWN (``margin_bounds``, the whole batch at once);
* the LP relaxation (``scipy.optimize.linprog``, HiGHS) with exactly CROWN's intermediate bounds
  (a ``Bounder`` on the same batch, whose final pass must reproduce ``margin_bounds``' CROWN
  bound): stable ReLUs are exact (``y = z`` or ``y = 0``, so they stay affine and get no
  variable), unstable ones get variables ``z`` in ``[lo, hi]`` and ``y`` with the triangle
  ``y >= 0, y >= z, y <= hi (z - lo) / (hi - lo)``; a max-pool window is ``y = x_j`` where
  advlab's relaxation is exact (``j``, the element of largest lower bound, dominates), else a
  variable with ``y >= x_i`` for every element and advlab's own upper chord on ``x_j``
  (``pool_relaxation``). Affine layers are sparse matrices (a Conv2d by index arithmetic);
* the exact minimum (``scipy.optimize.milp``, HiGHS): the same program with big-M binaries
  instead of the triangles and a binary per max-pool element that can be the maximum. Every MILP
  solution is replayed through the model in float64 at its input, which must give its value.

Every CROWN inequality holds on that LP's polytope and the LP relaxes the network, so on every
pair ``IBP <= exact``, ``CROWN <= LP <= exact`` and ``alpha-CROWN <= exact`` must hold
(alpha-CROWN re-optimizes intermediate bounds, so it may beat the LP). "exact" in the checks is
the MILP optimum; where the MILP hits its time limit, or is skipped, it is the smallest margin
found (the MILP's best solution, or the model at the LP's optimal input): an upper bound on the
minimum, so a bound above it is still a definite violation. A violation beyond ``--tol`` (1e-4
plus 1e-6 times the bounds' size, for float32 rounding) is a soundness bug: it is printed loudly
and the script exits with status 1 (as it does when an LP fails or the encoding disagrees with
the model).

Models (trained with the standard recipe if their file is missing; mnist5k, 2 epochs with
``--quick``): the MLP 784-100-100-10 (``mlp``), the 4-layer, 5-filter CNN of CNN-Cert's MNIST
tables (``cnn-cert-mnist``) and ``papernot-mnist``; the first ``--n`` correctly classified MNIST
test images. The defaults are chosen for the MILP:

* MLP: eps 0.01, 10 images, all 9 targets: 15-46 unstable ReLUs per image, every MILP solved
  (at 0.02 up to 80 unstable, and some MILPs ran past a minute).
* CNN: eps 0.002, 10 images, only the target with the smallest CROWN bound (``--all-targets``):
  600-1,000 unstable ReLUs at any radius above ~1e-4 (a first-layer filter with bias 5e-5 turns
  unstable on the whole zero background, ~300 second-layer ReLUs behind it), which HiGHS does not
  close within ``--milp-time`` (30 s): exact then lies in [dual bound, best found], both printed.
* papernot: eps 0.002, 2 images, all targets, LP only: ~1,300 unstable ReLUs and ~2,900 max-pool
  binaries; HiGHS found no feasible point in 2 minutes (``--milp-papernot`` tries anyway).

Time per batch: advlab's methods on the whole batch; LP and MILP: their summed solve times
(building the programs and the ``Bounder``'s intermediate bounds are printed apart). Budget on
one busy CPU thread: the default run took 17 minutes (MLP 4.5, mostly MILP; CNN 5.5, mostly the
MILP time limit; papernot 7.5, three CROWN passes of ~60 s per image, most of it the bounds of
the 22k max-pool inputs); ``--quick`` (MLP and CNN, 2 images each at eps 0.005 and 0.001, 10 s
per MILP) 40 s; ``--quick --models papernot`` (1 image, eps 5e-4) about 3 minutes.

    python bench/certify_exactness.py --quick
    python bench/certify_exactness.py
    python bench/certify_exactness.py --models mlp --n 20 --eps-mlp 0.005
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from scipy.optimize import Bounds, LinearConstraint, linprog, milp
from torch import Tensor, nn

from _common import first_correct, load_frozen
from advlab.certify import Bounder, margin_bounds, margin_spec
from advlab.certify.bounds import pool_relaxation
from advlab.data import load_dataset
from advlab.models.zoo import Normalize
from advlab.threat import ThreatModel

OUT = Path(__file__).resolve().parent / "out"
INF = math.inf

#: name -> (zoo architecture, architecture kwargs, default weights file, full-MNIST epochs)
MODELS: dict[str, tuple[str, dict[str, Any], Path, int]] = {
    "mlp": ("mlp", {}, OUT / "mlp-mnist-full.safetensors", 12),
    "cnn": ("cnn-cert-mnist", {"activation": "relu"}, OUT / "certify/cnncert-relu.safetensors", 5),
    "papernot": ("papernot-mnist", {}, OUT / "papernot-mnist-full.safetensors", 12),
}
TITLES = {
    "mlp": "MLP 784-100-100-10",
    "cnn": "CNN-Cert 4-layer 5-filter",
    "papernot": "papernot-mnist",
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# models


def get_model(name: str, path: Path, args: argparse.Namespace) -> nn.Module:
    """The saved model at ``path``; trained there first if the file is missing."""
    arch, kwargs, _, epochs = MODELS[name]
    if not path.exists():
        from advlab.defenses import TrainConfig, train_and_save

        data = "mnist5k" if args.quick else "mnist"
        cfg = TrainConfig(epochs=2 if args.quick else epochs, batch_size=128, lr=1e-3)
        log(f"{path} is missing: training {arch} on {data} for {cfg.epochs} epochs")
        train_and_save(arch, data, cfg, path, data_dir=None if args.quick else args.data_dir,
                       arch_kwargs=kwargs or None, device="cpu")  # fmt: skip
    return load_frozen(path)


# ---------------------------------------------------------------------------------------------
# affine layers as sparse matrices


def affine_matrix(layer: nn.Module, in_shape: tuple[int, ...]) -> tuple[sp.csr_matrix, np.ndarray]:
    """``(A, b)`` with ``layer(v) = A v + b`` on flattened single samples of shape ``in_shape``,
    checked against the layer on a random input."""
    n_in = math.prod(in_shape)
    layer = copy.deepcopy(layer).double()
    with torch.no_grad():
        bias = layer(torch.zeros(1, *in_shape, dtype=torch.float64)).flatten().numpy()
        if isinstance(layer, nn.Linear):
            a = sp.csr_matrix(layer.weight.numpy())
        elif (
            isinstance(layer, nn.Conv2d)
            and not isinstance(layer.padding, str)
            and (layer.padding_mode == "zeros")
        ):
            a = conv_matrix(layer, in_shape)
        elif isinstance(layer, (nn.Flatten, nn.Identity, nn.Dropout)):
            a = sp.identity(n_in, format="csr")
        elif isinstance(layer, Normalize):  # diagonal
            one = torch.ones(1, *in_shape, dtype=torch.float64)
            a = sp.diags(layer(one).flatten().numpy() - bias, format="csr")
        else:  # any other affine layer: its columns, pushing unit vectors through it
            cols = []
            for i in range(0, n_in, 512):
                k = min(512, n_in - i)
                eye = torch.zeros(k, n_in, dtype=torch.float64)
                eye[torch.arange(k), torch.arange(i, i + k)] = 1.0
                cols.append(sp.csr_matrix(layer(eye.view(k, *in_shape)).flatten(1).numpy() - bias))
            a = sp.vstack(cols).T.tocsr()
        v = torch.rand(
            1, *in_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
        )
        want = layer(v).flatten().numpy()
    got = a @ v.flatten().numpy() + bias
    if not np.allclose(got, want, rtol=1e-9, atol=1e-9):
        raise AssertionError(f"sparse matrix of {layer} disagrees with the layer")
    return a.tocsr(), bias


def conv_matrix(layer: nn.Conv2d, in_shape: tuple[int, ...]) -> sp.csr_matrix:
    """The matrix of a (zero-padded) ``Conv2d`` by index arithmetic, without its bias."""
    ci, h, w = in_shape
    wt = layer.weight.detach().numpy()  # (co, ci / groups, kh, kw)
    co, cig, kh, kw = wt.shape
    (s0, s1), (p0, p1), (d0, d1) = layer.stride, layer.padding, layer.dilation
    ho = (h + 2 * p0 - d0 * (kh - 1) - 1) // s0 + 1
    wo = (w + 2 * p1 - d1 * (kw - 1) - 1) // s1 + 1
    cog = co // layer.groups
    o = np.arange(co).reshape(-1, 1, 1, 1, 1, 1)
    c = (o // cog) * cig + np.arange(cig).reshape(1, -1, 1, 1, 1, 1)
    oy = np.arange(ho).reshape(1, 1, 1, 1, -1, 1)
    ox = np.arange(wo).reshape(1, 1, 1, 1, 1, -1)
    iy = oy * s0 - p0 + (np.arange(kh) * d0).reshape(1, 1, -1, 1, 1, 1)
    ix = ox * s1 - p1 + (np.arange(kw) * d1).reshape(1, 1, 1, -1, 1, 1)
    shape = (co, cig, kh, kw, ho, wo)
    rows = np.broadcast_to((o * ho + oy) * wo + ox, shape)
    cols = np.broadcast_to((c * h + iy) * w + ix, shape)
    vals = np.broadcast_to(wt[:, :, :, :, None, None], shape)
    ok = np.broadcast_to((iy >= 0) & (iy < h) & (ix >= 0) & (ix < w), shape) & (vals != 0)
    return sp.csr_matrix((vals[ok], (rows[ok], cols[ok])), shape=(co * ho * wo, ci * h * w))


# ---------------------------------------------------------------------------------------------
# the network on one sample as a linear program / mixed-integer program


def unit(cols: np.ndarray, n: int, scale: np.ndarray | float = 1.0) -> sp.csr_matrix:
    """Rows ``scale_i * e_{cols_i}``."""
    k = len(cols)
    vals = np.broadcast_to(np.asarray(scale, dtype=np.float64), (k,))
    return sp.csr_matrix((vals, (np.arange(k), cols)), shape=(k, n))


@dataclass
class Program:
    """Variables with bounds (binaries for the MILP only) and rows ``lo <= A v <= hi`` (some for
    the MILP only), over at most ``cap`` variables."""

    cap: int
    lb: list[np.ndarray] = field(default_factory=list)
    ub: list[np.ndarray] = field(default_factory=list)
    binary: list[np.ndarray] = field(default_factory=list)
    blocks: list[tuple[sp.csr_matrix, np.ndarray, np.ndarray, bool]] = field(default_factory=list)
    n: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def new(self, lb: np.ndarray | float, ub: np.ndarray | float, k: int | None = None,
            binary: bool = False) -> np.ndarray:  # fmt: skip
        k = k if k is not None else max(np.size(lb), np.size(ub))
        idx = np.arange(self.n, self.n + k)
        self.n += k
        if self.n > self.cap:
            raise AssertionError("variable capacity exceeded")
        self.lb.append(np.broadcast_to(np.asarray(lb, dtype=np.float64), (k,)))
        self.ub.append(np.broadcast_to(np.asarray(ub, dtype=np.float64), (k,)))
        self.binary.append(np.full(k, binary))
        return idx

    def rows(self, a: sp.spmatrix, lo: np.ndarray | float, hi: np.ndarray | float,
             milp_only: bool = False) -> None:  # fmt: skip
        k = a.shape[0]
        if k:
            lo_v = np.broadcast_to(np.asarray(lo, dtype=np.float64), (k,))
            hi_v = np.broadcast_to(np.asarray(hi, dtype=np.float64), (k,))
            self.blocks.append((sp.csr_matrix(a), lo_v, hi_v, milp_only))

    def count(self, key: str, k: int) -> None:
        self.counts[key] = self.counts.get(key, 0) + int(k)

    def finish(self) -> dict[str, Any]:
        if not self.blocks:  # every neuron stable: one redundant row, so that no matrix is empty
            self.rows(unit(np.array([0]), self.cap), self.lb[0][0], self.ub[0][0])
        lb, ub = np.concatenate(self.lb), np.concatenate(self.ub)
        binary = np.concatenate(self.binary)
        a = sp.vstack([b[0] for b in self.blocks]).tocsc()[:, : self.n].tocsr()
        lo = np.concatenate([b[1] for b in self.blocks])
        hi = np.concatenate([b[2] for b in self.blocks])
        milp_only = np.concatenate([np.full(b[0].shape[0], b[3]) for b in self.blocks])
        # the LP: no binaries, no MILP-only rows; equalities apart, two-sided rows split
        keep, rows = ~binary, ~milp_only
        a_lp = a[rows][:, keep]
        lo_lp, hi_lp = lo[rows], hi[rows]
        eq = lo_lp == hi_lp
        up = ~eq & np.isfinite(hi_lp)
        down = ~eq & np.isfinite(lo_lp)
        return {
            "n_vars": self.n,
            "n_rows": a.shape[0],
            "nnz": a.nnz,
            "keep": keep,
            "lp": {
                "A_eq": a_lp[eq],
                "b_eq": hi_lp[eq],
                "A_ub": sp.vstack([a_lp[up], -a_lp[down]]).tocsr(),
                "b_ub": np.concatenate([hi_lp[up], -lo_lp[down]]),
                "bounds": np.stack([lb[keep], ub[keep]], axis=1),
            },
            "milp": {
                "constraints": LinearConstraint(a, lo, hi),
                "bounds": Bounds(lb, ub),
                "integrality": binary.astype(np.int64),
            },
        }


Expr = tuple[sp.csr_matrix, np.ndarray]  # node value = M v + c, one row per element


def select(keep: np.ndarray, m: sp.csr_matrix) -> sp.csr_matrix:
    """``m`` with the rows where ``keep`` is false zeroed."""
    return (sp.diags(keep.astype(np.float64)) @ m).tocsr()


def encode_relu(prog: Program, expr: Expr, lo: np.ndarray, hi: np.ndarray) -> Expr:
    """ReLU on CROWN's pre-activation bounds. Stable neurons stay affine in the variables
    (``y = z`` or ``y = 0``: no variable, no row); an unstable one gets variables ``z`` (in
    ``[lo, hi]``) and ``y``, related by the triangle (LP) and big-M with a binary (MILP)."""
    m, c = expr
    n, cap = len(c), prog.cap
    act = lo >= 0
    un = np.flatnonzero((lo < 0) & (hi > 0))
    prog.count("active", int(act.sum()))
    prog.count("unstable", len(un))
    prog.count("inactive", n - int(act.sum()) - len(un))
    m_out, c_out = select(act, m), np.where(act, c, 0.0)
    if len(un):
        lu, hu = lo[un], hi[un]
        z, y, d = prog.new(lu, hu), prog.new(0.0, hu), prog.new(0.0, 1.0, len(un), binary=True)
        prog.rows(unit(z, cap) - m[un], c[un], c[un])
        prog.rows(unit(y, cap) - unit(z, cap), 0.0, INF)  # y >= z
        s = hu / np.maximum(hu - lu, 1e-12)  # CROWN's upper slope
        prog.rows(unit(y, cap) - unit(z, cap, s), -INF, -s * lu)  # the triangle's upper side
        # y <= z - lo (1 - d) and y <= hi d: y = z when d = 1, y = 0 when d = 0
        prog.rows(unit(y, cap) - unit(z, cap) - unit(d, cap, lu), -INF, -lu, milp_only=True)
        prog.rows(unit(y, cap) - unit(d, cap, hu), -INF, 0.0, milp_only=True)
        m_out = m_out + sp.csr_matrix((np.ones(len(un)), (un, y)), shape=(n, cap))
    return m_out.tocsr(), c_out


def encode_maxpool(prog: Program, expr: Expr, layer: nn.MaxPool2d, shape: tuple[int, ...],
                   lo_t: Tensor, hi_t: Tensor) -> Expr:  # fmt: skip
    """``y = max`` over each window. advlab's relaxation (``pool_relaxation``) picks the element
    ``j`` of largest lower bound; where no other element's upper bound exceeds it, ``y = x_j``
    exactly (no variable). Elsewhere ``y`` is a variable with ``y >= x_i`` for every element and
    advlab's upper chord on ``x_j`` (LP), and a binary per element that can be the maximum (``j``
    and those whose upper bound exceeds ``x_j``'s lower bound; MILP, exact)."""
    m, c = expr
    ch, h, w = shape
    lo, hi = lo_t.double().flatten().numpy(), hi_t.double().flatten().numpy()
    k, st, pad, dil = (nn.modules.utils._pair(v) for v in
                       (layer.kernel_size, layer.stride or layer.kernel_size, layer.padding,
                        layer.dilation))  # fmt: skip
    pos = torch.arange(h * w, dtype=torch.float64).view(1, 1, h, w)
    pos = F.pad(pos, (pad[1], pad[1], pad[0], pad[0]), value=-1.0)
    win = F.unfold(pos, k, dil, 0, st)[0].long().numpy()  # (K, L) positions in a channel
    elem = (np.arange(ch)[:, None, None] * h * w + win[None]).transpose(0, 2, 1)  # (C, L, K)
    elem = elem.reshape(-1, win.shape[0])  # (windows, K)
    valid = np.broadcast_to(win.T[None] >= 0, (ch, *win.T.shape)).reshape(elem.shape)
    e = np.where(valid, elem, 0)
    p = pool_relaxation(layer, lo_t[None], hi_t[None])
    j = (np.arange(ch)[:, None] * h * w + p.index[0].numpy()).flatten()  # (windows,)
    slope, cst = p.slope[0].double().numpy().flatten(), p.const[0].double().numpy().flatten()
    cand = valid & ((hi[e] > lo[j][:, None]) | (e == j[:, None]))
    free = np.flatnonzero(cand.sum(axis=1) > 1)  # windows whose maximum is not x_j
    n_win, cap = len(j), prog.cap
    m_out = select(~np.isin(np.arange(n_win), free), m[j])
    c_out = c[j].copy()
    if len(free):
        lo_w = np.where(valid[free], lo[e[free]], -INF).max(axis=1)
        hi_w = np.where(valid[free], hi[e[free]], -INF).max(axis=1)
        y = prog.new(lo_w, hi_w)
        c_out[free] = 0.0
        m_out = m_out + sp.csr_matrix((np.ones(len(free)), (free, y)), shape=(n_win, cap))
        # y >= x_i for every element
        wi, ki = np.nonzero(valid[free])
        ei = e[free][wi, ki]
        prog.rows(unit(y[wi], cap) - m[ei], c[ei], INF)
        # the chord y <= s x_j + c
        jf, sf = j[free], slope[free]
        chord = unit(y, cap) - sp.csr_matrix(m[jf].multiply(sf[:, None]))
        prog.rows(chord, -INF, cst[free] + sf * c[jf])
        # MILP: y <= x_i + (U - l_i)(1 - d_i) for the candidates i, sum_i d_i = 1
        wi, ki = np.nonzero(cand[free])
        ei = e[free][wi, ki]
        d = prog.new(0.0, 1.0, len(ei), binary=True)
        prog.count("pool binaries", len(ei))
        big = hi_w[wi] - lo[ei]
        prog.rows(unit(y[wi], cap) - m[ei] + unit(d, cap, big), -INF, big + c[ei],
                  milp_only=True)  # fmt: skip
        prog.rows(sp.csr_matrix((np.ones(len(d)), (wi, d)), shape=(len(free), cap)), 1.0, 1.0,
                  milp_only=True)  # fmt: skip
    prog.count("pool windows", n_win)
    prog.count("pool windows relaxed", len(free))
    return m_out.tocsr(), c_out


@dataclass
class Network:
    """A model's graph with its affine layers as sparse matrices (shared by all samples)."""

    nodes: list[Any]
    shapes: list[tuple[int, ...]]
    affine: dict[int, tuple[sp.csr_matrix, np.ndarray]]
    cap: int


def network(bounder: Bounder) -> Network:
    nodes = bounder.nodes
    shapes = [tuple(s[1:]) for s in bounder.shapes]
    affine = {}
    for i, node in enumerate(nodes):
        if node.kind == "affine":
            affine[i] = affine_matrix(node.layer, shapes[node.inputs[0]])
        elif node.kind not in ("input", "relu", "maxpool"):
            raise NotImplementedError(f"no LP encoding for node {node.name} ({node.kind})")
    cap = math.prod(shapes[0]) + 4 * sum(math.prod(s) for s in shapes)
    return Network(nodes, shapes, affine, cap)


def encode(net: Network, box: dict[int, tuple[Tensor, Tensor]], x_lo: Tensor, x_hi: Tensor
           ) -> tuple[Program, Expr]:  # fmt: skip
    """One sample's program and the output node's expression. ``box[j]``: CROWN's bounds of
    node ``j`` for this sample."""
    prog = Program(net.cap)
    lo0, hi0 = x_lo.double().flatten().numpy(), x_hi.double().flatten().numpy()
    xs = prog.new(lo0, hi0)
    exprs: dict[int, Expr] = {0: (unit(xs, net.cap), np.zeros(len(xs)))}
    for i, node in enumerate(net.nodes):
        if node.kind == "input":
            continue
        src = exprs[node.inputs[0]]
        if node.kind == "affine":
            a, b = net.affine[i]
            prod = (a @ src[0]).tocsr()
            prod.eliminate_zeros()
            exprs[i] = (prod, a @ src[1] + b)
        elif node.kind == "relu":
            lo, hi = (t.double().flatten().numpy() for t in box[node.inputs[0]])
            exprs[i] = encode_relu(prog, src, lo, hi)
        else:
            exprs[i] = encode_maxpool(prog, src, node.layer, net.shapes[node.inputs[0]],
                                      *box[node.inputs[0]])  # fmt: skip
    return prog, exprs[len(net.nodes) - 1]


# ---------------------------------------------------------------------------------------------
# solving


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """HiGHS prints the odd debug line to the process's stdout: send it to stderr instead."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def solve_lp(model: dict[str, Any], obj: np.ndarray, time_limit: float
             ) -> tuple[float, np.ndarray | None, float]:  # fmt: skip
    """``(minimum, solution or None if not solved, seconds)`` of the LP relaxation."""
    lp = model["lp"]
    tick = time.perf_counter()
    res = linprog(obj[model["keep"]], A_ub=lp["A_ub"], b_ub=lp["b_ub"], A_eq=lp["A_eq"],
                  b_eq=lp["b_eq"], bounds=lp["bounds"], method="highs",
                  options={"time_limit": time_limit})  # fmt: skip
    secs = time.perf_counter() - tick
    if res.status != 0:
        return math.nan, None, secs
    return float(res.fun), res.x, secs


def solve_milp(model: dict[str, Any], obj: np.ndarray, time_limit: float,
               gap: float) -> tuple[float, float, bool, np.ndarray | None, float]:  # fmt: skip
    """``(best solution's value, dual bound, optimal, solution, seconds)`` of the MILP."""
    mp = model["milp"]
    # HiGHS's RINS/RENS sub-MIPs took 90% of the time on the MLP: off (passed to HiGHS as is)
    opts = {"time_limit": time_limit, "mip_rel_gap": gap, "mip_heuristic_run_rins": False,
            "mip_heuristic_run_rens": False}  # fmt: skip
    tick = time.perf_counter()
    with warnings.catch_warnings(), stdout_to_stderr():
        warnings.filterwarnings("ignore", "Unrecognized options", RuntimeWarning)
        res = milp(obj, integrality=mp["integrality"], bounds=mp["bounds"],
                   constraints=mp["constraints"], options=opts)  # fmt: skip
    secs = time.perf_counter() - tick
    primal = float(res.fun) if res.x is not None else math.nan
    dual = getattr(res, "mip_dual_bound", None)
    dual = float(dual) if dual is not None else math.nan
    return primal, dual, res.status == 0, res.x, secs


# ---------------------------------------------------------------------------------------------
# one model


@dataclass
class Setting:
    n: int
    eps: float
    all_targets: bool  # every target j != y, else the one with the smallest CROWN bound
    milp: bool


@dataclass
class Result:
    name: str
    setting: Setting
    pairs: int = 0
    vals: dict[str, list[float]] = field(default_factory=dict)  # per (sample, target) pair
    times: dict[str, float] = field(default_factory=dict)
    lp_fail: int = 0
    milp_timeouts: int = 0
    replay: float = 0.0  # max |MILP value - the model's margin at the MILP's input|
    crown_match: float = 0.0  # max |Bounder's CROWN - margin_bounds' CROWN|
    violations: dict[str, list[str]] = field(default_factory=dict)
    excess: dict[str, float] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)
    encoding_errors: list[str] = field(default_factory=list)


#: (label, lower, upper): ``upper`` "exact" is the MILP optimum, or where the MILP did not
#: prove one (or did not run) the smallest margin found: still an upper bound on the minimum
CHECKS = (
    ("IBP <= exact", "ibp", "exact"),
    ("CROWN <= LP", "crown", "lp"),
    ("LP <= exact", "lp", "exact"),
    ("alpha-CROWN <= exact", "alpha-crown", "exact"),
)


def margin_at(model64: nn.Module, sol: np.ndarray, lo: Tensor, hi: Tensor, ys: int,
              j: int) -> float:  # fmt: skip
    """The model's margin ``z_y - z_j`` (float64) at a solver's input (the first variables)."""
    xs = torch.from_numpy(sol[: lo.numel()].copy()).view(1, *lo.shape)
    xs = torch.minimum(torch.maximum(xs, lo.double()), hi.double())
    with torch.no_grad():
        z = model64(xs)[0]
    return float(z[ys] - z[j])


def run_model(name: str, model: nn.Module, x: Tensor, y: Tensor, setting: Setting,
              args: argparse.Namespace) -> Result:  # fmt: skip
    res = Result(name, setting)
    eps, b = setting.eps, len(x)
    threat = ThreatModel("linf", eps)
    adv: dict[str, Tensor] = {}
    for method in ("ibp", "crown", "alpha-crown"):
        tick = time.perf_counter()
        with torch.no_grad() if method != "alpha-crown" else torch.enable_grad():
            adv[method] = margin_bounds(model, x, y, threat, method=method).detach()
        res.times[method] = time.perf_counter() - tick
        log(f"{name}: {method} {res.times[method]:.1f} s")
    # CROWN's intermediate bounds, on the same batch as margin_bounds; its final pass must give
    # margin_bounds' CROWN bound again
    tick = time.perf_counter()
    with torch.no_grad():
        bounder = Bounder(model, x, threat, torch.full((b,), eps, dtype=x.dtype), "crown")
        need = sorted({n.inputs[0] for n in bounder.nodes if n.kind in ("relu", "maxpool")})
        box = {j: bounder.bounds(j) for j in need}
        spec = margin_spec(y, bounder.shapes[-1][1], x.dtype)
        again = bounder.lower(spec).T.scatter(1, y[:, None], INF)
    res.times["intermediate"] = time.perf_counter() - tick
    fin = torch.isfinite(adv["crown"])
    res.crown_match = float((again[fin] - adv["crown"][fin]).abs().max())
    net = network(bounder)
    model64 = copy.deepcopy(model).double()
    res.times.update(lp=0.0, milp=0.0, build=0.0)
    keys = ("ibp", "crown", "alpha-crown", "lp", "primal", "dual", "f_lp", "exact")
    res.vals = {k: [] for k in keys}
    res.violations = {c[0]: [] for c in CHECKS}
    res.excess = {c[0]: -INF for c in CHECKS}
    for s in range(b):
        tick = time.perf_counter()
        lo_s, hi_s = bounder.lo[s], bounder.hi[s]
        prog, (m_out, c_out) = encode(net, {j: (lo[s], hi[s]) for j, (lo, hi) in box.items()},
                                      lo_s, hi_s)  # fmt: skip
        solver = prog.finish()
        res.times["build"] += time.perf_counter() - tick
        for k, v in prog.counts.items():
            res.counts[k] = res.counts.get(k, 0) + v / b
        res.counts["variables"] = res.counts.get("variables", 0) + solver["n_vars"] / b
        res.counts["nonzeros"] = res.counts.get("nonzeros", 0) + solver["nnz"] / b
        ys = int(y[s])
        targets = [j for j in range(m_out.shape[0]) if j != ys]
        if not setting.all_targets:
            targets = [min(targets, key=lambda j: float(adv["crown"][s, j]))]
        for j in targets:
            row = (m_out[ys] - m_out[j]).toarray().ravel()
            obj, const = row[: prog.n], float(c_out[ys] - c_out[j])
            v = {k: float(adv[k][s, j]) for k in ("ibp", "crown", "alpha-crown")}
            lp, lp_x, secs = solve_lp(solver, obj, args.lp_time)
            res.times["lp"] += secs
            res.lp_fail += lp_x is None
            v["lp"] = lp + const
            v["f_lp"] = math.nan if lp_x is None else margin_at(model64, lp_x, lo_s, hi_s, ys, j)
            v["primal"] = v["dual"] = math.nan
            optimal = False
            if setting.milp:
                primal, dual, optimal, sol, secs = solve_milp(solver, obj, args.milp_time,
                                                              args.mip_gap)  # fmt: skip
                res.times["milp"] += secs
                res.milp_timeouts += not optimal
                v["primal"], v["dual"] = primal + const, dual + const
                if sol is not None:
                    f = margin_at(model64, sol, lo_s, hi_s, ys, j)
                    res.replay = max(res.replay, abs(f - v["primal"]))
                    if abs(f - v["primal"]) > args.tol:
                        res.encoding_errors.append(
                            f"sample {s} target {j}: MILP value {v['primal']:.6f} but the model "
                            f"gives {f:.6f} at its input"
                        )
                if optimal and v["primal"] > v["f_lp"] + args.tol:
                    res.encoding_errors.append(
                        f"sample {s} target {j}: MILP optimum {v['primal']:.6f} above the "
                        f"model's margin {v['f_lp']:.6f} at the LP's input"
                    )
            # the exact minimum, or the smallest margin found: an upper bound on it
            v["exact"] = v["primal"] if optimal else float(np.fmin(v["primal"], v["f_lp"]))
            for k in keys:
                res.vals[k].append(v[k])
            res.pairs += 1
            for label, lo_k, hi_k in CHECKS:
                lo_v, hi_v = v[lo_k], v[hi_k]
                if math.isnan(lo_v) or math.isnan(hi_v):
                    continue
                over = lo_v - hi_v
                res.excess[label] = max(res.excess[label], over)
                if over > args.tol + 1e-6 * max(abs(lo_v), abs(hi_v)):
                    res.violations[label].append(
                        f"sample {s} (label {ys}) target {j}: {lo_k} {lo_v:.6f} > {hi_k} {hi_v:.6f}"
                    )
        log(f"{name}: sample {s + 1}/{b}: {prog.counts.get('unstable', 0)} unstable ReLUs, "
            f"{solver['n_vars']} variables; LP {res.times['lp']:.1f} s, "
            f"MILP {res.times['milp']:.1f} s so far")  # fmt: skip
    return res


# ---------------------------------------------------------------------------------------------
# report


def mean(v: list[float]) -> float:
    a = np.array(v, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if len(a) else math.nan


def print_table(results: list[Result], args: argparse.Namespace) -> int:
    """The table; returns the number of failed checks."""
    print()
    print(f"advlab's certified margin bounds vs scipy/HiGHS, L-inf, {torch.get_num_threads()} "
          f"torch thread(s): mean lower bound on z_y - z_j over the (image, target) pairs")  # fmt: skip
    head = f"{'model':30}{'method':16}{'mean':>10}{'time/batch':>18}   "
    head += f"{'check':22}{'violations':>10}{'max excess':>12}"
    print(head)
    print("-" * len(head))
    bad = 0
    for r in results:
        t, st, v = r.times, r.setting, r.vals
        rows = [
            ("IBP", mean(v["ibp"]), f"{t['ibp']:.3f} s"),
            ("CROWN", mean(v["crown"]), f"{t['crown']:.2f} s"),
            ("alpha-CROWN", mean(v["alpha-crown"]), f"{t['alpha-crown']:.2f} s"),
            ("LP", mean(v["lp"]), f"{t['lp']:.2f} s"),
        ]
        if not st.milp:
            rows.append(("f at LP's x*", mean(v["f_lp"]), "MILP skipped"))
        elif not r.milp_timeouts:
            rows.append(("exact (MILP)", mean(v["primal"]), f"{t['milp']:.2f} s"))
        else:
            t_o = f"{t['milp']:.1f} s ({r.milp_timeouts} t/o)"
            rows.append(("MILP best found", mean(v["primal"]), t_o))
            rows.append(("MILP dual bound", mean(v["dual"]), ""))
        label = [
            TITLES[r.name],
            f"eps {st.eps:g}, {st.n} image(s)",
            f"{r.pairs} pairs ({'all' if st.all_targets else 'min-CROWN'} targets)",
        ]
        for i, (meth, val, secs) in enumerate(rows):
            line = f"{label[i] if i < len(label) else '':30}{meth:16}{val:>10.4f}{secs:>18}   "
            if i < len(CHECKS):
                check = CHECKS[i][0]
                nv = len(r.violations[check])
                bad += nv
                ex = r.excess[check]
                ran = ex > -INF
                line += f"{check:22}{(nv if ran else '-')!s:>10}"
                line += f"{ex:>12.2e}" if ran else f"{'-':>12}"
            print(line.rstrip())
        c = r.counts
        n_relu = c.get("active", 0) + c.get("unstable", 0) + c.get("inactive", 0)
        pool = ""
        if c.get("pool windows"):
            pool = (f", {c['pool windows relaxed']:.0f}/{c['pool windows']:.0f} max-pool windows "
                    f"relaxed ({c['pool binaries']:.0f} binaries)")  # fmt: skip
        print(f"{'':30}per image: {c.get('unstable', 0):.0f}/{n_relu:.0f} ReLUs unstable{pool}, "
              f"{c.get('variables', 0):.0f} variables, {c.get('nonzeros', 0):.0f} nonzeros")  # fmt: skip
        replay = f"; |MILP - f(x*)| <= {r.replay:.1e}" if st.milp else ""
        print(f"{'':30}CROWN's intermediate bounds (Bounder) {t['intermediate']:.2f} s, encoding "
              f"{t['build']:.2f} s{replay}; |Bounder's CROWN - margin_bounds'| <= "
              f"{r.crown_match:.1e}")  # fmt: skip
        if not st.milp:
            print(f"{'':30}MILP skipped (--milp-papernot to try it): 'exact' in the checks is "
                  "the model's margin at the LP's optimal input")  # fmt: skip
        elif r.milp_timeouts:
            gaps = [p - d for p, d in zip(v["primal"], v["dual"], strict=True)]
            gaps = [g for g in gaps if math.isfinite(g)]
            print(f"{'':30}MILP time limit ({args.milp_time:g} s) hit on {r.milp_timeouts} "
                  f"pair(s): exact lies in [dual bound, best found] (gap <= "
                  f"{max(gaps, default=math.nan):.3g}); the checks use the best found")  # fmt: skip
        if r.lp_fail:
            print(f"{'':30}WARNING: {r.lp_fail} LP(s) not solved (time limit or infeasible)")
            bad += 1
        if r.crown_match > 1e-4:
            print(f"{'':30}WARNING: the Bounder's CROWN differs from margin_bounds' by "
                  f"{r.crown_match:.2e}: the LP may not share CROWN's intermediate bounds")  # fmt: skip
            bad += 1
        for e in r.encoding_errors:
            print(f"{'':30}ENCODING ERROR (this script, not advlab): {e}")
        bad += len(r.encoding_errors)
    print("-" * len(head))
    for r in results:
        for check, lines in r.violations.items():
            for line in lines:
                print(f"SOUNDNESS VIOLATION {TITLES[r.name]}: {check}: {line}")
    return bad


def settings(args: argparse.Namespace) -> dict[str, Setting]:
    """Each model's images, radius, targets and MILP: the flags, else the defaults (``--quick``'s
    or the full run's)."""

    def pick(value: float | None, quick: float, full: float) -> float:
        return value if value is not None else (quick if args.quick else full)

    n = int(pick(args.n, 2, 10))
    out = {
        "mlp": Setting(n, pick(args.eps_mlp, 0.005, 0.01), True, True),
        "cnn": Setting(n, pick(args.eps_cnn, 0.001, 0.002), False, True),
        "papernot": Setting(
            int(pick(args.n_papernot, 1, 2)),
            pick(args.eps_papernot, 5e-4, 2e-3),
            True,
            args.milp_papernot,
        ),
    }
    for s in out.values():
        s.all_targets = (s.all_targets or args.all_targets) and not args.min_target
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: few images, ~1 minute")
    ap.add_argument(
        "--models",
        default=None,
        help="comma-separated subset of mlp,cnn,papernot (default all; --quick: mlp,cnn)",
    )
    ap.add_argument("--n", type=int, default=None, help="images for the MLP and the CNN (10)")
    ap.add_argument("--n-papernot", type=int, default=None, help="images for papernot (2)")
    ap.add_argument("--eps-mlp", type=float, default=None, help="L-inf radius (0.01)")
    ap.add_argument("--eps-cnn", type=float, default=None, help="L-inf radius (0.002)")
    ap.add_argument("--eps-papernot", type=float, default=None, help="L-inf radius (0.002)")
    ap.add_argument(
        "--all-targets",
        action="store_true",
        help="every target on the CNN too (default: its smallest CROWN bound)",
    )
    ap.add_argument(
        "--min-target",
        action="store_true",
        help="only the target with the smallest CROWN bound, on every model",
    )
    ap.add_argument(
        "--milp-papernot",
        action="store_true",
        help="try the MILP on papernot too (thousands of binaries: time limits)",
    )
    ap.add_argument("--lp-time", type=float, default=120.0, help="seconds per LP")
    ap.add_argument("--milp-time", type=float, default=None, help="seconds per MILP (30)")
    ap.add_argument("--mip-gap", type=float, default=1e-6, help="HiGHS mip_rel_gap")
    ap.add_argument(
        "--tol",
        type=float,
        default=1e-4,
        help="slack of the checks (plus 1e-6 times the bounds' size)",
    )
    ap.add_argument("--mlp", type=Path, default=MODELS["mlp"][2])
    ap.add_argument("--cnn", type=Path, default=MODELS["cnn"][2])
    ap.add_argument("--papernot", type=Path, default=MODELS["papernot"][2])
    ap.add_argument("--data-dir", default=str(OUT.parents[1].parent / "shared" / "data"),
                    help="folder holding mnist/ (IDX)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.milp_time is None:
        args.milp_time = 10.0 if args.quick else 30.0
    torch.set_num_threads(args.threads)
    test = load_dataset("mnist", data_dir=args.data_dir).test
    start = time.perf_counter()
    plan = settings(args)
    results = []
    names = args.models or ("mlp,cnn" if args.quick else "mlp,cnn,papernot")
    for name in [m.strip() for m in names.split(",") if m.strip()]:
        if name not in MODELS:
            raise SystemExit(f"unknown model {name!r}; use {', '.join(MODELS)}")
        st = plan[name]
        model = get_model(name, getattr(args, name), args)
        x, y, _ = first_correct(model, test, st.n)
        log(f"{name}: {st.n} image(s), eps {st.eps:g}")
        results.append(run_model(name, model, x, y, st, args))
    bad = print_table(results, args)
    print(f"total {time.perf_counter() - start:.0f} s")
    if bad:
        print(f"FAILED: {bad} failed check(s), see above")
        sys.exit(1)
    print("every bound ordering holds on every pair")


if __name__ == "__main__":
    main()
