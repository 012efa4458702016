"""Checks an evaluation runs on itself, in plain words, each with its remedy.

A check is a function ``check(evaluation) -> list[Diagnostic]`` (empty when it passes) listed in
:data:`CHECKS` with a one-line description of what it looks at; the report shows the warnings in
a coloured banner under its headline and lists every check, passed or not, near the end. The
checks read only the stored numbers, so they hold for any model and data.

The idea that an evaluation should check itself for signs of a weak attack or masked gradients
follows AutoAttack's ``checks.py`` (Croce & Hein, "Reliable evaluation of adversarial robustness
with an ensemble of diverse parameter-free attacks", ICML 2020) and Carlini et al., "On
Evaluating Adversarial Robustness" (2019), whose checklist asks that robust accuracy fall with
eps and reach 0 when eps is large enough, and that iterative attacks beat single-step ones.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from advlab.evaluate.aggregate import Evaluation
from advlab.evaluate.plan import WORST_CASE


@dataclass(frozen=True)
class Diagnostic:
    """One finding of a check.

    Attributes:
        level: ``"error"`` (a number in the report is wrong or unsupported), ``"warning"`` (the
            robust accuracy is likely overestimated or too uncertain to use), ``"info"``, or
            ``"na"`` (the check does not apply to this run: ``detail`` says why).
        title: one short sentence.
        detail: what was seen, in plain words with the numbers.
        remedy: what to do about it.
    """

    level: str
    title: str
    detail: str
    remedy: str


Check = Callable[[Evaluation], list[Diagnostic]]

#: Single-step attacks, expected to be weaker than the iterative ones of the same norm.
SINGLE_STEP = frozenset({"fgsm"})
#: Iterative gradient attacks that should break at least what a single step breaks.
ITERATIVE = frozenset({"pgd", "bim"})


def _na(why: str) -> Diagnostic:
    return Diagnostic("na", "", why, "")


def _eps_text(norm: str, eps: float) -> str:
    return f"{norm} eps = {eps:g}"


def check_sample_size(ev: Evaluation) -> list[Diagnostic]:
    """The 95% intervals are narrow enough to read (at most +/- 5 points)."""
    widest = max(((s.ci_high - s.ci_low) / 2 for s in ev.summaries if s.n), default=0.0)
    if ev.n >= 1000 or widest <= 0.05:
        return []
    return [
        Diagnostic(
            "warning",
            f"Only {ev.n} samples: the intervals are wide.",
            f"With {ev.n} samples a robust accuracy is known to within ±{100 * widest:.0f} "
            "percentage points (95% interval), too loose to compare two models that differ "
            "by a few points.",
            "Evaluate more samples (advlab audit --n 1000, or --n 0 for the whole test set).",
        )
    ]


def check_clean_accuracy(ev: Evaluation) -> list[Diagnostic]:
    """Clean accuracy is well above chance (else the model or its preprocessing is wrong)."""
    chance = 1.0 / max(ev.num_classes, 1)
    if not math.isfinite(ev.clean_accuracy) or ev.clean_accuracy >= max(0.5, 2 * chance):
        return []
    return [
        Diagnostic(
            "error",
            f"Clean accuracy is only {100 * ev.clean_accuracy:.1f}%.",
            f"The model classifies {100 * ev.clean_accuracy:.1f}% of the samples correctly "
            f"without any attack (chance is {100 * chance:.0f}%); robust accuracies below it "
            "say little about robustness.",
            "Check that the model expects inputs in the threat model's range "
            f"[{ev.threats[0].lower:g}, {ev.threats[0].upper:g}] with its normalization inside "
            "the model, and that the class order of the data matches the model's outputs.",
        )
    ]


def check_monotone(ev: Evaluation) -> list[Diagnostic]:
    """Each bounded attack breaks at least as many samples at a larger eps."""
    out = []
    for a in ev.attacks:
        if a.spec.minimal:
            continue  # read from one run at every eps: monotone by construction
        for norm in ev.norms:
            curve = ev.curve(a.name, norm)
            for lo, hi in itertools.pairwise(curve):
                if hi.robust > lo.robust:
                    out.append(
                        Diagnostic(
                            "warning",
                            f"{a.name} is weaker at a larger eps ({_eps_text(norm, hi.eps)}).",
                            f"{a.name} leaves {hi.robust} samples robust at eps = {hi.eps:g} but "
                            f"only {lo.robust} at eps = {lo.eps:g}, although every "
                            "perturbation allowed at the smaller eps is also allowed at the "
                            "larger one: the attack does not converge, or the gradients are "
                            "masked.",
                            "Run the attack with more steps and restarts (and a step size "
                            "proportional to eps), and add an attack of another family "
                            "(e.g. deepfool or cw-l2).",
                        )
                    )
                    break
    return out


def check_single_step(ev: Evaluation) -> list[Diagnostic]:
    """An iterative attack breaks at least as many samples as a single-step one."""
    singles = [a.name for a in ev.attacks if a.name in SINGLE_STEP]
    iters = [a.name for a in ev.attacks if a.name in ITERATIVE]
    if not singles or not iters:
        return [_na("the run has no pair of single-step and iterative attacks")]
    out = []
    for s in singles:
        for it in iters:
            for norm in ev.norms:
                worse = [
                    (x, y)
                    for x, y in zip(ev.curve(s, norm), ev.curve(it, norm), strict=False)
                    if x.eps > 0 and x.robust < y.robust
                ]
                if worse:
                    x, y = worse[0]
                    out.append(
                        Diagnostic(
                            "warning",
                            f"One-step {s} beats iterative {it} at {_eps_text(norm, x.eps)}.",
                            f"{s} leaves {x.robust} samples robust and {it} {y.robust}: an "
                            f"iterative attack that starts where {s} does should break at "
                            "least as many. This is a classic sign of gradient masking or of "
                            f"a mis-configured {it} (too few steps, step size too small).",
                            f"Increase {it}'s steps and restarts; compare with a gradient-free "
                            "or minimal-perturbation attack.",
                        )
                    )
    return out


def check_large_eps(ev: Evaluation) -> list[Diagnostic]:
    """At L-inf eps of half the input range robust accuracy is at most the largest class share."""
    out = []
    large = [t for t in ev.threats if t.norm == "linf" and t.eps >= (t.upper - t.lower) / 2 > 0]
    if not large:
        return [_na("the grid has no L-inf eps of half the input range")]
    for t in large:
        clean = ev.records[("clean", t.norm, 0.0)]
        share = max(Counter(r.label for r in clean).values(), default=0) / max(len(clean), 1)
        row = ev.row(WORST_CASE, t.eps, t.norm)
        if row.robust_accuracy > share + 1e-12:
            out.append(
                Diagnostic(
                    "warning",
                    f"Robust accuracy is {100 * row.robust_accuracy:.1f}% at "
                    f"{_eps_text(t.norm, t.eps)}.",
                    f"At an L-inf eps of half the input range every input can be moved to the "
                    f"same mid-range image, so at most the largest class's share of the samples "
                    f"({100 * share:.1f}%) can stay correct; the attacks left "
                    f"{100 * row.robust_accuracy:.1f}%. They are failing, most likely on masked "
                    "gradients.",
                    "Add a gradient-free attack, more restarts and steps; do not report these "
                    "robust accuracies until this check passes.",
                )
            )
            break
    return out


def check_budget(ev: Evaluation) -> list[Diagnostic]:
    """No attack was cut short by a query budget before it succeeded."""
    cut = [s for s in ev.summaries if s.stopped and s.attack != WORST_CASE]
    if not cut:
        return []
    s = max(cut, key=lambda s: s.stopped)
    return [
        Diagnostic(
            "warning",
            "A query budget ended some attacks early.",
            f"{s.stopped} samples of {s.attack} at {_eps_text(s.norm, s.eps)} (and "
            f"{len(cut) - 1} other rows) ran out of queries before the attack succeeded; "
            "they count as robust, so the robust accuracy is an overestimate.",
            "Raise the per-sample query budget, or report the number as 'robust within "
            "this budget'.",
        )
    ]


def check_attack_families(ev: Evaluation) -> list[Diagnostic]:
    """Robust accuracy is measured by more than one attack."""
    if len(ev.attacks) > 1:
        return []
    name = ev.attacks[0].name if ev.attacks else "no attack"
    other = "deepfool" if name in SINGLE_STEP | ITERATIVE else "pgd"
    return [
        Diagnostic(
            "info",
            "One attack only.",
            f"Every robust accuracy here comes from {name} alone; it is an upper bound that "
            "another attack may lower.",
            f"Add an attack of another family (e.g. --attacks {name},{other}).",
        )
    ]


def check_certified(ev: Evaluation) -> list[Diagnostic]:
    """Certified radii never exceed an adversarial example found (the bounds are sound)."""
    if not ev.certified:
        return [_na("the run was not certified (advlab audit --certify)")]
    out = []
    for c in ev.certified:
        try:
            worst = ev.row(WORST_CASE, c.eps, c.norm)
        except KeyError:
            continue
        if c.certified > worst.robust:
            out.append(
                Diagnostic(
                    "error",
                    f"Certified accuracy exceeds robust accuracy at {_eps_text(c.norm, c.eps)}.",
                    f"{c.certified} samples are certified but only {worst.robust} survived the "
                    "attacks: a certificate or an attack's verification is wrong.",
                    "Report this as a bug with the run's JSON report.",
                )
            )
            break
    for norm, bounds in ev.bounds.items():
        bad = [b for b in bounds if b.correct and b.attack_norm is not None and not b.sound(norm)]
        if bad:
            out.append(
                Diagnostic(
                    "error",
                    f"{len(bad)} certified radii exceed an adversarial example ({norm}).",
                    f"Samples {', '.join(f'#{b.index}' for b in bad[:5])} have a certified "
                    "radius larger than the norm of an adversarial example found for them.",
                    "Report this as a bug with the run's JSON report.",
                )
            )
    return out


#: The checks, in the order they are listed: ``(what it looks at, the check)``.
CHECKS: list[tuple[str, Check]] = [
    ("clean accuracy well above chance", check_clean_accuracy),
    ("robust accuracy falls as eps grows", check_monotone),
    ("iterative attacks beat single-step ones", check_single_step),
    ("robust accuracy vanishes at half the input range (L-inf)", check_large_eps),
    ("no attack cut short by a query budget", check_budget),
    ("certified bounds agree with the attacks", check_certified),
    ("intervals narrow enough to read", check_sample_size),
    ("more than one attack", check_attack_families),
]


def diagnose(
    ev: Evaluation, checks: list[tuple[str, Check]] | None = None
) -> list[tuple[str, list[Diagnostic]]]:
    """Run ``checks`` (default :data:`CHECKS`): each check's description and its findings."""
    return [(what, check(ev)) for what, check in (CHECKS if checks is None else checks)]
