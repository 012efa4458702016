"""advlab's white-box attacks against torchattacks, foolbox 3 and ART, on one model and one image set.

Every library attacks the same images with the same budget, in this one process, and every number
in the table is measured by this run. Success and robust accuracy are never taken from a library:
each returned batch is re-checked here with a fresh forward pass, and an output that is non-finite,
outside the box ``[0, 1]``, outside the threat ball (PGD), unchanged, or all zero (foolbox's
placeholder for a sample it never broke, which its own success flag may count as a success)
counts as a failure.

Sections (``--only``):

* ``cw``: C&W L2, untargeted, confidence 0, ``--cw-bs-steps`` (5) binary-search steps of
  ``--cw-steps`` (100) iterations from ``c = --cw-c-init`` (0.01), at a learning rate tuned per
  library on held-out images (the next ``--tune-n`` correctly classified ones after the first
  ``--n``) over ``--cw-lrs``: the setting with the most successes wins, ties go to the smaller
  median L2. torchattacks has no binary search: it gets one run of ``bs_steps * steps``
  iterations at a fixed ``c``, tuned together with the rate over ``--ta-cw-cs``. ART multiplies
  ``c`` by 2 (not 10) while no success has been found, so from ``c = 0.01`` five steps never get
  past 0.16; its initial ``c`` is therefore tuned over ``--art-cw-cs``, and since ART line-searches
  the learning rate at every step (halving or doubling it up to 5 times) only ``--art-cw-lrs``
  (0.01) is tried. ART's C&W also costs ~25 model passes per iteration and per image, so by
  default it runs (tuning included) on the first 50 images only (``--limit art:cw=50``).
  The tuning picks the strongest setting, which need not be the fastest. So advlab also runs as
  ``advlab[fast]``: its fastest tuning setting that was at least as strong on the tuning images
  as the strongest reference's chosen one (as many successes, a median no larger), when that is
  another setting; the notes give its ratios to each library.
* ``deepfool``: DeepFool L2, 50 steps, overshoot 0.02 (10 candidate classes where the library
  has that option; torchattacks always uses all classes).
* ``pgd-linf``: PGD L-inf, eps 0.3, step 0.01, 40 steps, one random start.
* ``pgd-l2``: PGD L2, eps 2.0, step 0.1, 40 steps, one random start. The libraries' starts differ:
  advlab and torchattacks draw a radius uniform in ``[0, eps]``, foolbox and ART a point uniform in
  the ball's volume (so almost on the sphere); see ``bench/l2_random_start.py``.
  For both PGD sections advlab is also run with ``early_stop=False`` (row ``advlab[no-es]``), which
  does the same number of gradient steps per sample as the other libraries; by default advlab
  stops working on a sample once it is misclassified.
* ``jsma``: JSMA, theta 1, gamma 0.1, targeted at random classes (the same for every library;
  foolbox 3 has no JSMA). The norm columns count the features changed (exact comparison).
  advlab runs its default JSMA-F (saliency on the softmax) and, as ``advlab[Z]``, JSMA-Z (on
  the logits); torchattacks and ART differentiate whatever the model outputs, so they run on the
  logits model and, as ``[softmax]``, on the model with a softmax appended. Ratios are taken
  against advlab's default row.

Columns: ``n`` is the number of images the row ran on (``--limit``); ``success`` is the attack
success rate (``rob.acc`` for PGD: the fraction of images still classified correctly);
``median``/``mean`` are the L2 norms (features changed for JSMA) over the successful samples;
``t_adv/t_lib`` is advlab's time per image over this library's, ``n_adv/n_lib`` advlab's median
over this library's on the same images. A JSMA hit that changed more than ``floor(gamma * D)``
features (ART checks its budget only before each step, so it can overrun by 2) is a failure. Results also go to ``bench/out/compare_whitebox.json``.

Run (after installing the comparators, see bench/README.md):

    python bench/compare_whitebox.py --model bench/out/papernot-mnist-full.safetensors
    python bench/compare_whitebox.py --model M --n 100 --only cw,deepfool --libs advlab,foolbox
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import platform
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import advlab
from _common import predict
from advlab import ThreatModel
from advlab.attacks import get_attack
from advlab.data import load_dataset
from advlab.fileio import atomic_write_json
from advlab.models import load_model

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_MODEL = REPO / "bench" / "out" / "papernot-mnist-full.safetensors"
DEFAULT_OUT = REPO / "bench" / "out" / "compare_whitebox.json"
SECTIONS = ("cw", "deepfool", "pgd-linf", "pgd-l2", "jsma")
LIBS = ("advlab", "torchattacks", "foolbox", "art")
LOWER, UPPER = 0.0, 1.0
#: Tolerance for the box and ball checks of returned images (float round-off).
TOL = 1e-5


class Unsupported(Exception):
    """The library has no implementation of this attack."""


# ---------------------------------------------------------------------------------------------
# verification: every library's output is judged by the same code


@torch.no_grad()
def verify(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    x_adv: Tensor,
    *,
    target: Tensor | None = None,
    norm: str | None = None,
    eps: float | None = None,
    max_features: int | None = None,
) -> dict[str, Tensor]:
    """Re-check returned images: validity, prediction, success, norms, features changed.

    ``max_features`` (JSMA) turns a success that changed more features than the budget into a
    failure, counted in ``over_budget``.
    """
    x_adv = x_adv.detach().to(torch.float32).reshape(x.shape)
    d = (x_adv - x).flatten(1)
    flat = x_adv.flatten(1)
    finite = torch.isfinite(flat).all(dim=1)
    in_box = ((flat >= LOWER - TOL) & (flat <= UPPER + TOL)).all(dim=1)
    in_ball = torch.ones_like(finite)
    if norm == "linf" and eps is not None:
        in_ball = d.abs().amax(dim=1) <= eps + TOL
    elif norm == "l2" and eps is not None:
        in_ball = d.norm(dim=1) <= eps * (1 + TOL) + TOL
    changed = (d != 0).any(dim=1)
    zero = (flat == 0).all(dim=1) & ~(x.flatten(1) == 0).all(dim=1)
    valid = finite & in_box & in_ball
    pred = predict(model, torch.where(valid.view(-1, 1, 1, 1), x_adv, x))
    hit = pred == target if target is not None else pred != y
    features = (d != 0).sum(dim=1)
    over = torch.zeros_like(finite)
    if max_features is not None:
        over = hit & valid & (features > max_features)
    success = hit & valid & changed & ~zero & ~over
    return {
        "success": success,
        "robust": ~success if target is None else pred == y,
        "l2": d.norm(dim=1),
        "features": features,
        "invalid": ~valid,
        "zero": zero,
        "over_budget": over,
    }


def summarize(v: dict[str, Tensor], key: str) -> dict[str, float]:
    s = v["success"]
    vals = v[key][s].double()
    return {
        "n": len(s),
        "success_rate": float(s.double().mean()),
        "robust_accuracy": float(v["robust"].double().mean()),
        "median": float(vals.median()) if len(vals) else math.nan,
        "mean": float(vals.mean()) if len(vals) else math.nan,
        "invalid": int(v["invalid"].sum()),
        "zero_images": int(v["zero"].sum()),
        "over_budget": int(v["over_budget"].sum()),
    }


# ---------------------------------------------------------------------------------------------
# adapters: one per library, each returns the adversarial batch as a CPU float tensor


class Adapter:
    name = ""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def cw(self, x: Tensor, y: Tensor, *, lr: float, c: float, a: argparse.Namespace) -> Tensor:
        raise Unsupported

    def deepfool(self, x: Tensor, y: Tensor, *, a: argparse.Namespace) -> Tensor:
        raise Unsupported

    def pgd(self, x: Tensor, y: Tensor, *, norm: str, eps: float, step: float, steps: int,
            seed: int) -> Tensor:  # fmt: skip
        raise Unsupported

    def jsma(self, x: Tensor, y: Tensor, target: Tensor, *, a: argparse.Namespace) -> Tensor:
        raise Unsupported


class Advlab(Adapter):
    name = "advlab"

    def __init__(
        self,
        model: nn.Module,
        early_stop: bool = True,
        jsma_logits: bool = False,
        cw_preset: str | None = None,
    ) -> None:
        super().__init__(model)
        self.early_stop = early_stop
        self.jsma_logits = jsma_logits
        self.cw_preset = cw_preset

    def cw(self, x: Tensor, y: Tensor, *, lr: float, c: float, a: argparse.Namespace) -> Tensor:
        if self.cw_preset is not None:  # what a user gets from cw_l2(model, x, y, threat)
            preset = get_attack("cw-l2")(
                self.model, x, y, ThreatModel("l2", math.inf), preset=self.cw_preset
            )
            return preset.x_adv
        res = get_attack("cw-l2")(
            self.model, x, y, ThreatModel("l2", math.inf),
            confidence=0.0, c_init=c, binary_search_steps=a.cw_bs_steps, steps=a.cw_steps, lr=lr,
            abort_early=True,
        )  # fmt: skip
        return res.x_adv

    def deepfool(self, x: Tensor, y: Tensor, *, a: argparse.Namespace) -> Tensor:
        res = get_attack("deepfool")(
            self.model, x, y, ThreatModel("l2", math.inf), steps=a.df_steps, overshoot=a.overshoot
        )
        return res.x_adv

    def pgd(self, x: Tensor, y: Tensor, *, norm: str, eps: float, step: float, steps: int,
            seed: int) -> Tensor:  # fmt: skip
        res = get_attack("pgd")(
            self.model, x, y, ThreatModel(norm, eps),
            steps=steps, step_size=step, random_start=True, early_stop=self.early_stop,
            seed=seed,
        )  # fmt: skip
        return res.x_adv

    def jsma(self, x: Tensor, y: Tensor, target: Tensor, *, a: argparse.Namespace) -> Tensor:
        res = get_attack("jsma")(
            self.model, x, y, ThreatModel("l0", math.inf),
            theta=a.theta, gamma=a.gamma, target=target, use_logits=self.jsma_logits,
        )  # fmt: skip
        return res.x_adv


class TorchAttacks(Adapter):
    name = "torchattacks"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.ta = importlib.import_module("torchattacks")

    def cw(self, x: Tensor, y: Tensor, *, lr: float, c: float, a: argparse.Namespace) -> Tensor:
        # no binary search over c: one run with the whole iteration budget at a fixed c
        atk = self.ta.CW(self.model, c=c, kappa=0, steps=a.cw_bs_steps * a.cw_steps, lr=lr)
        return atk(x, y)

    def deepfool(self, x: Tensor, y: Tensor, *, a: argparse.Namespace) -> Tensor:
        return self.ta.DeepFool(self.model, steps=a.df_steps, overshoot=a.overshoot)(x, y)

    def pgd(self, x: Tensor, y: Tensor, *, norm: str, eps: float, step: float, steps: int,
            seed: int) -> Tensor:  # fmt: skip
        torch.manual_seed(seed)  # torchattacks draws its start from the global generator
        cls = self.ta.PGD if norm == "linf" else self.ta.PGDL2
        return cls(self.model, eps=eps, alpha=step, steps=steps, random_start=True)(x, y)

    def jsma(self, x: Tensor, y: Tensor, target: Tensor, *, a: argparse.Namespace) -> Tensor:
        atk = self.ta.JSMA(self.model, theta=a.theta, gamma=a.gamma)
        atk.set_mode_targeted_by_label(quiet=True)
        return atk(x, target)


class Foolbox(Adapter):
    name = "foolbox"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.fb = importlib.import_module("foolbox")
        self.fmodel = self.fb.PyTorchModel(model, bounds=(LOWER, UPPER), device="cpu")

    def cw(self, x: Tensor, y: Tensor, *, lr: float, c: float, a: argparse.Namespace) -> Tensor:
        atk = self.fb.attacks.L2CarliniWagnerAttack(
            binary_search_steps=a.cw_bs_steps, steps=a.cw_steps, stepsize=lr, confidence=0,
            initial_const=c, abort_early=True,
        )  # fmt: skip
        raw, _, _ = atk(self.fmodel, x, y, epsilons=None)
        return raw

    def deepfool(self, x: Tensor, y: Tensor, *, a: argparse.Namespace) -> Tensor:
        atk = self.fb.attacks.L2DeepFoolAttack(
            steps=a.df_steps, candidates=10, overshoot=a.overshoot, loss="logits"
        )
        raw, _, _ = atk(self.fmodel, x, y, epsilons=None)
        return raw

    def pgd(self, x: Tensor, y: Tensor, *, norm: str, eps: float, step: float, steps: int,
            seed: int) -> Tensor:  # fmt: skip
        torch.manual_seed(seed)  # eagerpy draws from torch's global generator
        cls = self.fb.attacks.LinfPGD if norm == "linf" else self.fb.attacks.L2PGD
        atk = cls(abs_stepsize=step, steps=steps, random_start=True)
        _, clipped, _ = atk(self.fmodel, x, y, epsilons=eps)
        return clipped


class Art(Adapter):
    name = "art"

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], classes: int) -> None:
        super().__init__(model)
        logging.getLogger("art").setLevel(logging.WARNING)
        self.ev = importlib.import_module("art.attacks.evasion")
        est = importlib.import_module("art.estimators.classification")
        self.clf = est.PyTorchClassifier(
            model=model, loss=nn.CrossEntropyLoss(), input_shape=input_shape,
            nb_classes=classes, clip_values=(LOWER, UPPER), device_type="cpu",
        )  # fmt: skip
        self.classes = classes

    def cw(self, x: Tensor, y: Tensor, *, lr: float, c: float, a: argparse.Namespace) -> Tensor:
        atk = self.ev.CarliniL2Method(
            self.clf, confidence=0.0, targeted=False, learning_rate=lr,
            binary_search_steps=a.cw_bs_steps, max_iter=a.cw_steps, initial_const=c,
            batch_size=len(x), verbose=False,
        )  # fmt: skip
        return torch.from_numpy(atk.generate(x.numpy(), y=y.numpy()))

    def deepfool(self, x: Tensor, y: Tensor, *, a: argparse.Namespace) -> Tensor:
        atk = self.ev.DeepFool(
            self.clf, max_iter=a.df_steps, epsilon=a.overshoot, nb_grads=10, batch_size=len(x),
            verbose=False,
        )  # fmt: skip
        return torch.from_numpy(atk.generate(x.numpy()))

    def pgd(self, x: Tensor, y: Tensor, *, norm: str, eps: float, step: float, steps: int,
            seed: int) -> Tensor:  # fmt: skip
        np.random.seed(seed)  # noqa: NPY002  (ART draws its start from numpy's global RNG)
        atk = self.ev.ProjectedGradientDescent(
            self.clf, norm=np.inf if norm == "linf" else 2, eps=eps, eps_step=step,
            max_iter=steps, targeted=False, num_random_init=1, batch_size=len(x), verbose=False,
        )  # fmt: skip
        return torch.from_numpy(atk.generate(x.numpy(), y=y.numpy()))

    def jsma(self, x: Tensor, y: Tensor, target: Tensor, *, a: argparse.Namespace) -> Tensor:
        atk = self.ev.SaliencyMapMethod(
            self.clf, theta=a.theta, gamma=a.gamma, batch_size=len(x), verbose=False
        )
        onehot = np.eye(self.classes, dtype=np.float32)[target.numpy()]
        return torch.from_numpy(atk.generate(x.numpy(), y=onehot))


def make_adapters(
    names: list[str], model: nn.Module, input_shape: tuple[int, ...], classes: int
) -> tuple[dict[str, Adapter], dict[str, str]]:
    """The adapters that could be built, and the reason for each library that could not."""
    out: dict[str, Adapter] = {}
    missing: dict[str, str] = {}
    for n in names:
        try:
            if n == "advlab":
                out[n] = Advlab(model)
            elif n == "torchattacks":
                out[n] = TorchAttacks(model)
            elif n == "foolbox":
                out[n] = Foolbox(model)
            elif n == "art":
                out[n] = Art(model, input_shape, classes)
        except ImportError as e:
            missing[n] = f"not importable: {e}"
    return out, missing


# ---------------------------------------------------------------------------------------------
# running


def timed(fn: Callable[[Tensor, Tensor, Tensor], Tensor], x: Tensor, y: Tensor, t: Tensor,
          batch: int) -> tuple[Tensor, float]:  # fmt: skip
    """Run ``fn`` over ``x`` in chunks of ``batch``; the adversarial batch and the seconds spent."""
    outs, secs = [], 0.0
    for i in range(0, len(x), batch):
        t0 = time.perf_counter()
        out = fn(x[i : i + batch], y[i : i + batch], t[i : i + batch])
        secs += time.perf_counter() - t0
        outs.append(torch.as_tensor(out).detach().cpu().to(torch.float32))
    return torch.cat(outs), secs


def cw_grid(lib: str, a: argparse.Namespace) -> list[tuple[float, float]]:
    """The (lr, c) pairs tried for one library's C&W."""
    if lib == "torchattacks":
        return [(lr, c) for c in a.ta_cw_cs for lr in a.cw_lrs]
    if lib == "art":
        return [(lr, c) for c in a.art_cw_cs for lr in a.art_cw_lrs]
    return [(lr, a.cw_c_init) for lr in a.cw_lrs]


def tune_cw(
    ad: Adapter, model: nn.Module, xt: Tensor, yt: Tensor, a: argparse.Namespace
) -> tuple[float, float, list[dict[str, Any]]]:
    """Pick (lr, c) for C&W on the held-out tuning images: most successes, then smallest median."""
    trials: list[dict[str, Any]] = []
    grid = cw_grid(ad.name, a)
    for lr, c in grid:
        if len(grid) == 1:
            return lr, c, trials
        adv, secs = timed(attack_fn("cw", ad, a, lr=lr, c=c), xt, yt, yt, a.batch_size)
        s = summarize(verify(model, xt, yt, adv), "l2")
        trials.append({"lr": lr, "c": c, "n": len(xt), "success_rate": s["success_rate"],
                       "median": s["median"], "time_s": secs})  # fmt: skip
        print(f"    tune {ad.name:12s} c={c:<6g} lr={lr:<6g} on {len(xt)}: success="
              f"{s['success_rate']:.3f} median L2={s['median']:.4f} ({secs:.1f}s)", flush=True)  # fmt: skip
    best = max(trials, key=lambda r: (r["success_rate"], -_nan_big(r["median"])))
    return best["lr"], best["c"], trials


def _nan_big(v: float) -> float:
    return math.inf if math.isnan(v) else v


def parse_limits(spec: str) -> dict[tuple[str, str], int]:
    """``"art:cw=50,torchattacks:jsma=100"`` -> {("art", "cw"): 50, ...}."""
    out: dict[tuple[str, str], int] = {}
    for item in filter(None, (t.strip() for t in spec.split(","))):
        key, _, n = item.partition("=")
        lib, _, sec = key.partition(":")
        if lib not in LIBS or sec not in SECTIONS or not n.isdigit() or int(n) < 1:
            raise argparse.ArgumentTypeError(f"bad --limit entry {item!r}; use LIB:SECTION=N")
        out[(lib, sec)] = int(n)
    return out


PGD = {"pgd-linf": ("linf", 0.3, 0.01), "pgd-l2": ("l2", 2.0, 0.1)}


def attack_fn(
    sec: str, ad: Adapter, a: argparse.Namespace, *, lr: float, c: float
) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """``fn(x, y, target) -> x_adv`` running section ``sec`` with adapter ``ad``."""
    if sec == "cw":
        return lambda x, y, _t: ad.cw(x, y, lr=lr, c=c, a=a)
    if sec == "deepfool":
        return lambda x, y, _t: ad.deepfool(x, y, a=a)
    if sec == "jsma":
        return lambda x, y, t: ad.jsma(x, y, t, a=a)
    norm, eps, step = PGD[sec]
    return lambda x, y, _t: ad.pgd(x, y, norm=norm, eps=eps, step=step, steps=a.pgd_steps,
                                   seed=a.seed)  # fmt: skip


def run_section(
    sec: str,
    adapters: dict[str, Adapter],
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    targets: Tensor,
    tune: tuple[Tensor, Tensor],
    a: argparse.Namespace,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    per_sample: dict[str, dict[str, Tensor]] = {}
    runs: list[tuple[str, Adapter]] = list(adapters.items())
    if sec.startswith("pgd") and "advlab" in adapters:
        runs.insert(1, ("advlab[no-es]", Advlab(model, early_stop=False)))
    if sec == "cw" and "advlab" in adapters and a.cw_presets:
        # cw_l2's own budgets, untuned: what cw_l2(model, x, y, threat) gives a user
        for i, p in enumerate(a.cw_presets.split(",")):
            runs.insert(1 + i, (f"advlab[{p}]", Advlab(model, cw_preset=p)))
    if sec == "jsma":
        # advlab's default is JSMA-F (softmax); the libraries differentiate the model's output,
        # so each also runs on the model with a softmax appended (its JSMA-F).
        if "advlab" in adapters:
            runs.insert(1, ("advlab[Z]", Advlab(model, jsma_logits=True)))
        soft = nn.Sequential(model, nn.Softmax(dim=1)).eval()
        shape, classes = tuple(x.shape[1:]), int(y.max()) + 1
        for lib in ("torchattacks", "art"):
            if lib in adapters:
                variant, _ = make_adapters([lib], soft, shape, max(classes, 10))
                runs.append((f"{lib}[softmax]", variant[lib]))
    budget = math.floor(a.gamma * x[0].numel())
    for label, ad in runs:
        row: dict[str, Any] = {"attack": sec, "library": label}
        lim = a.limit.get((ad.name, sec), len(x))
        xs, ys, ts = x[:lim], y[:lim], targets[:lim]
        try:
            settings: dict[str, Any] = {}
            norm, eps = PGD.get(sec, (None, None, None))[:2]
            key, tgt, cap = "l2", None, None
            lr, c = math.nan, math.nan
            if sec == "cw" and isinstance(ad, Advlab) and ad.cw_preset is not None:
                settings = {"preset": ad.cw_preset}
            elif sec == "cw":
                lr, c, trials = tune_cw(ad, model, tune[0][:lim], tune[1][:lim], a)
                settings = {"lr": lr, "c": c, "tuning": trials}
                kind = "fixed" if label == "torchattacks" else "initial"
                print(f"  {label}: chosen lr={lr:g}, {kind} c={c:g}")
            elif sec == "jsma":
                key, tgt, cap = "features", ts, budget
                settings = {"budget": budget}
            elif sec in PGD:
                settings = {"eps": eps, "step": PGD[sec][2], "steps": a.pgd_steps}
            fn = attack_fn(sec, ad, a, lr=lr, c=c)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                adv, secs = timed(fn, xs, ys, ts, a.batch_size)
            v = verify(model, xs, ys, adv, target=tgt, norm=norm, eps=eps, max_features=cap)
            per_sample[label] = {"success": v["success"], "value": v[key]}
            row |= summarize(v, key) | {"time_s": secs, "settings": settings}
        except Unsupported:
            row["unsupported"] = True
        rows.append(row)
        _print_progress(row)
    if sec == "cw" and "advlab" in adapters:
        fast = _fast_cw_row(adapters["advlab"], model, x, y, rows, per_sample, a)
        if fast is not None:
            rows.append(fast)
            _print_progress(fast)
    for base_label in ("advlab", "advlab[fast]"):
        base = next((r for r in rows if r["library"] == base_label and "time_s" in r), None)
        if base is None:
            continue
        suffix = "" if base_label == "advlab" else "_fast"
        for r in rows:
            if "time_s" not in r or r["library"].startswith("advlab"):
                continue
            # per-image time, and advlab's median over the same images (a limited row compares
            # fairly)
            r["time_ratio" + suffix] = (base["time_s"] / base["n"]) / (r["time_s"] / r["n"])
            b = per_sample[base_label]
            ok = b["success"][: r["n"]]
            med = float(b["value"][: r["n"]][ok].double().median()) if bool(ok.any()) else math.nan
            r["norm_ratio" + suffix] = (
                med / r["median"] if r["median"] and not math.isnan(r["median"]) else math.nan
            )
        if base_label == "advlab":
            for r in rows:
                if r["library"].startswith("advlab[") and "time_s" in r:
                    r["time_ratio"] = (base["time_s"] / base["n"]) / (r["time_s"] / r["n"])
                    r["norm_ratio"] = base["median"] / r["median"] if r["median"] else math.nan
    return rows


def _fast_cw_row(
    ad: Adapter,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    rows: list[dict[str, Any]],
    per_sample: dict[str, dict[str, Tensor]],
    a: argparse.Namespace,
) -> dict[str, Any] | None:
    """advlab's C&W at its fastest tuning setting that was at least as strong as the strongest
    reference on the tuning images (as many successes, a median no larger); None when that is
    the setting already run."""
    mine = next((r for r in rows if r["library"] == "advlab" and "settings" in r), None)
    refs = [r for r in rows if not r["library"].startswith("advlab") and "settings" in r]
    if mine is None or not refs or not mine["settings"]["tuning"]:
        return None

    def tuned(r: dict[str, Any]) -> dict[str, Any]:
        st = r["settings"]
        hit = [t for t in st["tuning"] if t["lr"] == st["lr"] and t["c"] == st["c"]]
        return hit[0] if hit else {"success_rate": r["success_rate"], "median": r["median"]}

    ref = max((tuned(r) for r in refs), key=lambda t: (t["success_rate"], -_nan_big(t["median"])))
    ok = [
        t
        for t in mine["settings"]["tuning"]
        if t["success_rate"] >= ref["success_rate"] and t["median"] <= ref["median"]
    ]
    if not ok:
        return None
    pick = min(ok, key=lambda t: t["time_s"])
    if pick["lr"] == mine["settings"]["lr"]:
        return None
    print(f"  advlab[fast]: lr={pick['lr']:g} (as strong as the strongest reference on the "
          f"tuning images, {pick['time_s']:.1f}s there)")  # fmt: skip
    fn = attack_fn("cw", ad, a, lr=pick["lr"], c=pick["c"])
    adv, secs = timed(fn, x, y, y, a.batch_size)
    v = verify(model, x, y, adv)
    per_sample["advlab[fast]"] = {"success": v["success"], "value": v["l2"]}
    settings = {
        "lr": pick["lr"],
        "c": pick["c"],
        "chosen_by": "fastest as strong as the best reference",
    }
    return (
        {"attack": "cw", "library": "advlab[fast]"}
        | summarize(v, "l2")
        | {"time_s": secs, "settings": settings}
    )


def _print_progress(r: dict[str, Any]) -> None:
    if r.get("unsupported"):
        print(f"  {r['library']}: no {r['attack']} in this library", flush=True)
        return
    print(f"  {r['library']}: n={r['n']} success {r['success_rate']:.3f}, robust acc "
          f"{r['robust_accuracy']:.3f}, median {r['median']:.4g}, {r['time_s']:.1f}s "
          f"{'; '.join(_notes(r))}", flush=True)  # fmt: skip


def _notes(r: dict[str, Any]) -> list[str]:
    notes = []
    if r["invalid"]:
        notes.append(f"{r['invalid']} outputs outside box/ball")
    if r["zero_images"]:
        notes.append(f"{r['zero_images']} all-zero outputs")
    if r["over_budget"]:
        notes.append(f"{r['over_budget']} hits over the {r['settings']['budget']}-feature budget")
    return notes


def fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-".rjust(int(spec.split(".")[0]) if spec[0].isdigit() else 1)
    return format(v, spec)


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (f"{'attack':9s} {'library':21s} {'n':>4s} {'metric':8s} {'value':>6s} {'median':>8s} "
            f"{'mean':>8s} {'time s':>8s} {'t_adv/t_lib':>11s} {'n_adv/n_lib':>11s}  notes")  # fmt: skip
    print("\n" + head)
    print("-" * len(head))
    for r in rows:
        if r.get("unsupported"):
            print(f"{r['attack']:9s} {r['library']:21s} (not available in this library)")
            continue
        pgd = r["attack"].startswith("pgd")
        metric = "rob.acc" if pgd else "success"
        value = r["robust_accuracy"] if pgd else r["success_rate"]
        notes = _notes(r)
        st = r.get("settings", {})
        if r["attack"] == "cw" and "preset" in st:
            notes.append(f"preset={st['preset']}")
        elif r["attack"] == "cw":
            notes.append(f"lr={st['lr']:g} c={st['c']:g}")
        if "time_ratio_fast" in r:
            notes.append(
                f"advlab[fast]/lib: t {r['time_ratio_fast']:.3f}, n {r['norm_ratio_fast']:.3f}"
            )
        med = None if pgd else r["median"]
        mean = None if pgd else r["mean"]
        nr = None if pgd else r.get("norm_ratio")
        spec = ".1f" if r["attack"] == "jsma" else ".4f"
        print(f"{r['attack']:9s} {r['library']:21s} {r['n']:4d} {metric:8s} {value:6.3f} "
              f"{fmt(med, '8' + spec)} {fmt(mean, '8' + spec)} {r['time_s']:8.2f} "
              f"{fmt(r.get('time_ratio'), '11.3f')} {fmt(nr, '11.3f')}  {'; '.join(notes)}")  # fmt: skip
    print(
        "t_adv/t_lib: advlab's time per image over the library's; n_adv/n_lib: advlab's median "
        "over the library's, on the images both ran on (advlab[...] rows: advlab's default row "
        "over this row)"
    )


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__,
           "numpy": np.__version__, "advlab": advlab.__version__}  # fmt: skip
    for mod, dist in (("torchattacks", "torchattacks"), ("foolbox", "foolbox"), ("art", "art")):
        try:
            out[dist] = importlib.import_module(mod).__version__
        except ImportError:
            out[dist] = "not installed"
    return out


def floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",") if v.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                    help="a papernot-mnist safetensors file saved by advlab")  # fmt: skip
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--n", type=int, default=500, help="first N correctly classified test images")
    ap.add_argument("--tune-n", type=int, default=100,
                    help="held-out images (after the first N) for the C&W learning-rate sweep")  # fmt: skip
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"subset of {','.join(SECTIONS)}")
    ap.add_argument("--libs", default=",".join(LIBS), help=f"subset of {','.join(LIBS)}")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cw-lrs", type=floats, default=[0.01, 0.05, 0.1])
    ap.add_argument("--cw-c-init", type=float, default=0.01)
    ap.add_argument("--ta-cw-cs", type=floats, default=[1.0, 10.0],
                    help="fixed c values tried for torchattacks' C&W (it has no binary search)")  # fmt: skip
    ap.add_argument(
        "--art-cw-cs",
        type=floats,
        default=[0.01, 1.0],
        help="initial c values tried for ART's C&W (it doubles c, never x10)",
    )
    ap.add_argument(
        "--art-cw-lrs",
        type=floats,
        default=[0.01],
        help="ART's C&W start learning rate (it line-searches it, x2^-5..x2^5, each step)",
    )
    ap.add_argument(
        "--limit",
        type=parse_limits,
        default=parse_limits("art:cw=50"),
        help="LIB:SECTION=N,...: run that library's section (and its tuning) on the "
        "first N images only; default art:cw=50 (ART's C&W costs ~25 passes per step)",
    )
    ap.add_argument("--cw-bs-steps", type=int, default=5)
    ap.add_argument("--cw-presets", default="default,paper",
                    help="cw_l2 presets also run untuned as advlab[PRESET] rows ('': none)")  # fmt: skip
    ap.add_argument("--cw-steps", type=int, default=100)
    ap.add_argument("--df-steps", type=int, default=50)
    ap.add_argument("--overshoot", type=float, default=0.02)
    ap.add_argument("--pgd-steps", type=int, default=40)
    ap.add_argument("--theta", type=float, default=1.0)
    ap.add_argument("--gamma", type=float, default=0.1)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = ap.parse_args()
    sections = [s.strip() for s in a.only.split(",") if s.strip()]
    libs = [s.strip() for s in a.libs.split(",") if s.strip()]
    bad = [s for s in sections if s not in SECTIONS] + [s for s in libs if s not in LIBS]
    if bad:
        ap.error(f"unknown section or library {bad}; sections: {SECTIONS}, libraries: {LIBS}")

    torch.set_num_threads(a.threads)
    model, meta = load_model(a.model)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    test = load_dataset("mnist", data_dir=a.data_dir).test
    pred = predict(model, test.x)
    correct = torch.nonzero(pred == test.y).squeeze(1)
    print(f"model {a.model} (arch {meta.get('arch')}): clean accuracy "
          f"{(pred == test.y).double().mean():.4f} on {len(test)} MNIST test images")  # fmt: skip
    idx, tidx = correct[: a.n], correct[a.n : a.n + a.tune_n]
    x, y = test.x[idx].contiguous(), test.y[idx].contiguous()
    tune = (test.x[tidx].contiguous(), test.y[tidx].contiguous())
    g = torch.Generator().manual_seed(a.seed)
    targets = (y + torch.randint(1, test.num_classes, y.shape, generator=g)) % test.num_classes
    print(f"attacking the first {len(x)} correctly classified images "
          f"(tuning on the next {len(tune[0])}); threads={torch.get_num_threads()}")  # fmt: skip

    adapters, missing = make_adapters(libs, model, tuple(x.shape[1:]), test.num_classes)
    for n, why in missing.items():
        print(f"skipping {n}: {why}")
    with torch.no_grad():  # warm-up, so the first library timed does not pay for it
        model(x[: a.batch_size])

    rows: list[dict[str, Any]] = []
    for sec in sections:
        print(f"\n== {sec}", flush=True)
        rows += run_section(sec, adapters, model, x, y, targets, tune, a)
    print_table(rows)

    result = {
        "model": str(a.model),
        "model_meta": {k: meta.get(k) for k in ("arch", "dataset", "clean_accuracy", "seed")},
        "n": len(x),
        "test_indices": idx.tolist(),
        "tune_indices": tidx.tolist(),
        "jsma_targets": targets.tolist(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
        | {"limit": {f"{lib}:{sec}": n for (lib, sec), n in a.limit.items()}},
        "versions": _versions(),
        "missing_libraries": missing,
        "rows": rows,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.out, json.loads(json.dumps(result, default=str)))
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
