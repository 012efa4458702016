"""What every attack shares: registration, the door, the per-call run, losses and finalize.

An attack is written as an *algorithm* on an :class:`AttackRun`::

    @register_attack("pgd", norms=("linf", "l2", "l1"), needs=Access.GRADIENTS,
                     check=_check_pgd)
    def pgd(run: AttackRun, *, steps: int = 40, ...) -> None:
        logits = run.scores(x_rows, rows, grad=True)   # every query goes through the run
        ...
        run.best[rows] = better_points                 # the answer so far, kept in place

and :func:`register_attack` turns it into the public function
``pgd(model, x, y, threat, *, target=None, seed=0, steps=40, ...) -> AttackResult``. That call
does, once for every attack:

1. rejects an unsupported norm, unknown hyper-parameters (listing the known ones), a target for
   an untargeted attack, and bad hyper-parameter values (the attack's ``check``);
2. wraps ``model`` in an oracle (:func:`advlab.oracle.as_oracle`) and checks that it reveals what
   the attack needs (:class:`~advlab.oracle.Access`);
3. validates ``x``, ``y`` and ``target`` (:func:`prepare`);
4. returns ``x`` unchanged when ``eps == 0`` (the threat set is ``{x}``), without running the
   algorithm;
5. runs the algorithm; if a query budget stops it (:class:`~advlab.errors.BudgetExhausted`),
   keeps :attr:`AttackRun.best` and records why in :attr:`AttackResult.stopped`;
6. :func:`finalize`: projects onto the threat set, asserts containment, and recomputes success
   with one fresh verification query per sample through the oracle's cheapest level (labels),
   so it works for every oracle. An attack's own idea of success is never trusted.

**Queries are counted by the run**, never by hand: every image an algorithm sends through
:meth:`AttackRun.scores` / :meth:`~AttackRun.labels` / :meth:`~AttackRun.topk` is charged to the
sample (row) it belongs to, and :attr:`AttackResult.queries` is that count. **The verification
query is charged too**: it is an image sent to the model, and a user paying per query pays for
it. It is reserved when the run starts, so a per-sample budget of ``B`` leaves ``B - 1`` queries
for the search and the verified answer can always be produced.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advlab.errors import BudgetExhausted, ConfigError, InputError
from advlab.oracle import Access, Oracle, TopK, as_oracle
from advlab.registry import ATTACKS
from advlab.results import AttackResult
from advlab.rng import SampleRNG, as_sample_rng
from advlab.threat import ThreatModel, check_inputs

#: ``algorithm(run, **params) -> extras or None``: the body of an attack.
Algorithm = Callable[..., "Mapping[str, Tensor] | None"]
#: ``check(threat, **params)``: raises ConfigError for bad hyper-parameter values.
Check = Callable[..., None]
#: ``resolve(threat, params) -> params``: fills defaults; called with ``threat=None`` for what
#: does not depend on the threat model (presets), then with the threat model when ``eps > 0``.
Resolve = Callable[["ThreatModel | None", "dict[str, Any]"], "dict[str, Any]"]
#: ``extras(x, x_adv) -> {name: (B,) tensor}``: per-sample numbers derived from the output.
Extras = Callable[[Tensor, Tensor], "dict[str, Tensor]"]
AttackFn = Callable[..., AttackResult]

#: Keyword arguments every attack takes besides its hyper-parameters.
CALL_ARGS = ("target", "seed")


class AttackRun:
    """One attack call on one batch: inputs, oracle, per-sample query counts, randomness and
    the best answer so far.

    Attributes:
        name: the attack's registered name.
        oracle: the model, behind its oracle.
        x, y, threat, target: the call's inputs (``x`` detached).
        rng: per-sample random streams (:class:`~advlab.rng.SampleRNG`).
        best: ``(B, *)`` the attack's answer so far, starting at ``x``. Algorithms update it in
            place, so that a run stopped by a query budget returns what it found.
        queries: ``(B,)`` int64 images sent for each sample so far.

    Rows: every query method takes the batch to send and ``rows``, a ``(n,)`` int64 tensor
    naming the sample (row of ``x``) each image belongs to; repeats are allowed (several
    candidates of one sample). ``rows=None`` means the images are ``x``'s rows in order.
    """

    def __init__(
        self,
        name: str,
        oracle: Oracle,
        x: Tensor,
        y: Tensor,
        threat: ThreatModel,
        target: Tensor | None,
        rng: SampleRNG,
    ) -> None:
        self.name = name
        self.oracle = oracle
        self.x = x.detach()
        self.y = y
        self.threat = threat
        self.target = target
        self.rng = rng
        self.best = self.x.clone(memory_format=torch.contiguous_format)
        self.queries = torch.zeros(self.n, dtype=torch.long, device=x.device)
        #: ``(B,)`` samples whose search a query budget ended (see :meth:`affordable`).
        self.exhausted = torch.zeros(self.n, dtype=torch.bool, device=x.device)
        self.stop_reason: str | None = None
        self._per_sample = oracle.budget.per_sample
        self._checked_labels = False
        oracle.reserve(self.n)  # the verification query of every sample
        self._reserve = self.n

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    def remaining(self, rows: Tensor | None = None) -> Tensor:
        """``(len(rows),)`` float64 queries each sample may still spend on the search (``inf``
        without a per-sample budget). The total budget is :attr:`Oracle.remaining`."""
        q = self.queries if rows is None else self.queries[rows]
        if self._per_sample is None:
            return torch.full(q.shape, float("inf"), dtype=torch.float64, device=q.device)
        return (self._per_sample - 1 - q).to(torch.float64)

    def affordable(self, rows: Tensor, cost: int = 1) -> Tensor:
        """``(len(rows),)`` bool: which of these samples can still pay ``cost`` queries.

        Budget-aware algorithms call it before a query and drop the samples that cannot pay,
        as they drop samples that are done: those keep their best answer, are marked
        :attr:`exhausted`, and the other samples go on, so a sample's result does not depend on
        the budgets of its batch-mates. (An algorithm that does not drop them is stopped as a
        whole by :class:`~advlab.errors.BudgetExhausted` at the first query that would overshoot.)
        """
        if self._per_sample is None:
            return torch.ones(rows.shape, dtype=torch.bool, device=rows.device)
        ok = self.queries[rows] + cost <= self._per_sample - 1
        if not bool(ok.all()):
            self.exhausted[rows[~ok]] = True
            self.stop_reason = (
                f"per-sample query budget of {self._per_sample} reached (one query per sample "
                "is kept for the final verification)"
            )
        return ok

    def _charge(self, x: Tensor, rows: Tensor | None) -> Tensor:
        if rows is None:
            if x.shape[0] != self.n:
                raise RuntimeError(f"internal error: {self.name} sent {x.shape[0]} images without rows")  # fmt: skip
            rows = torch.arange(self.n, device=self.queries.device)
        elif rows.shape != (x.shape[0],):
            raise RuntimeError(f"internal error: {self.name} sent {x.shape[0]} images with {tuple(rows.shape)} rows")  # fmt: skip
        if self._per_sample is not None:
            after = self.queries.index_add(0, rows, torch.ones_like(rows))
            if bool((after > self._per_sample - 1).any()):
                raise BudgetExhausted(
                    f"per-sample query budget of {self._per_sample} reached (one query per "
                    "sample is kept for the final verification)"
                )
        return rows

    def _count(self, rows: Tensor) -> None:
        self.queries.index_add_(0, rows, torch.ones_like(rows))
        if not self._checked_labels and self.oracle.num_classes is not None:
            self._checked_labels = True
            check_classes(self.oracle.num_classes, self.y, self.target)

    @property
    def limited(self) -> bool:
        """Whether a per-sample query budget applies (then see :meth:`affordable`)."""
        return self._per_sample is not None

    def scores(self, x: Tensor, rows: Tensor | None = None, *, grad: bool = False) -> Tensor:
        """``(n, C)`` logits of the images ``x`` (with the autograd graph when ``grad``).

        An oracle whose scores are probabilities answers with their logarithms, which are logits
        of the same softmax: attacks always see logits.
        """
        r = self._charge(x, rows)
        out = self.oracle.scores(x, grad=grad)
        self._count(r)
        if self.oracle.output == "probabilities":
            out = out.clamp_min(torch.finfo(out.dtype).tiny).log()
        return out

    def labels(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        """``(n,)`` predicted classes of the images ``x``."""
        r = self._charge(x, rows)
        out = self.oracle.labels(x)
        self._count(r)
        return out

    def topk(self, x: Tensor, k: int, rows: Tensor | None = None) -> TopK:
        """The ``k`` most likely classes of the images ``x``."""
        r = self._charge(x, rows)
        out = self.oracle.topk(x, k)
        self._count(r)
        return out

    def verify(self, x_adv: Tensor) -> Tensor:
        """The final verification: ``(B,)`` predictions from the reserved queries."""
        out = self.oracle.query(x_adv, level=Access.LABELS, reserved=True)
        assert isinstance(out, Tensor)
        self._reserve = 0
        self._count(torch.arange(self.n, device=self.queries.device))
        return out

    def close(self) -> None:
        """Give back a reservation that was not used (the run failed before verifying)."""
        self.oracle.release(self._reserve)
        self._reserve = 0


@dataclass(frozen=True)
class AttackSpec:
    """A registered attack.

    Attributes:
        name: registry name.
        fn: the public function ``fn(model, x, y, threat, *, target=None, seed=0, **params)``.
        algorithm: the body, ``algorithm(run, **params)``.
        norms: the threat-model norms the attack supports.
        needs: the oracle access the attack needs (gradients for white-box attacks).
        minimal: True for attacks that search for the smallest perturbation (C&W, DeepFool, ...)
            and so run with ``eps = inf``; False for attacks bounded by ``eps`` (FGSM, PGD).
        targeted: whether the attack accepts ``target``.
        defaults: its hyper-parameters and their defaults.
        description: one line for ``advlab list attacks``.
    """

    name: str
    fn: AttackFn
    algorithm: Algorithm
    norms: tuple[str, ...]
    needs: Access
    minimal: bool
    targeted: bool
    defaults: Mapping[str, Any]
    description: str
    check: Check | None = None
    extras: Extras | None = None
    resolve_defaults: Resolve | None = None

    def __call__(
        self, model: nn.Module | Oracle, x: Tensor, y: Tensor, threat: ThreatModel, **kw: Any
    ) -> AttackResult:
        return self.fn(model, x, y, threat, **kw)

    def resolve(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` checked against the known hyper-parameters, defaults filled in (presets
        too: what an evaluation stores is what runs)."""
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            call = [k for k in unknown if k in CALL_ARGS]
            why = f" ({', '.join(call)} is an argument of the call)" if call else ""
            raise ConfigError(
                f"attack {self.name!r} does not take {', '.join(map(repr, unknown))}{why}; its "
                f"parameters are {', '.join(self.defaults) or '(none)'}"
            )
        merged = {**self.defaults, **params}
        if self.resolve_defaults is not None:  # what does not depend on the threat model
            merged = self.resolve_defaults(None, merged)
        return merged


def _defaults(algorithm: Algorithm) -> dict[str, Any]:
    out = {}
    for i, p in enumerate(inspect.signature(algorithm).parameters.values()):
        if i == 0:
            continue  # the run
        if p.kind is not inspect.Parameter.KEYWORD_ONLY or p.default is inspect.Parameter.empty:
            raise TypeError(f"attack parameter {p.name!r} must be keyword-only with a default")
        out[p.name] = p.default
    return out


def register_attack(
    name: str,
    *,
    norms: tuple[str, ...],
    needs: Access = Access.GRADIENTS,
    minimal: bool = False,
    targeted: bool = True,
    check: Check | None = None,
    extras: Extras | None = None,
    resolve: Resolve | None = None,
) -> Callable[[Algorithm], AttackFn]:
    """Register an attack algorithm under ``name`` and return its public function.

    Args:
        norms: the threat-model norms it supports.
        needs: the oracle access it needs.
        minimal: a minimal-perturbation attack (runs with ``eps = inf``).
        targeted: it accepts ``target``.
        check: ``check(threat, **params)`` validating hyper-parameter values at the door.
        extras: ``extras(x, x_adv)``, per-sample numbers computed from the final output.
        resolve: ``resolve(threat, params) -> params`` replacing ``None`` defaults by their
            values, so that the algorithm gets and the result records exactly what ran: called
            with ``threat=None`` for presets (C&W's budget), then with the threat model for what
            depends on it (PGD's step size).
    """

    def deco(algorithm: Algorithm) -> AttackFn:
        doc = (algorithm.__doc__ or name).strip().splitlines()[0]
        defaults = _defaults(algorithm)

        @functools.wraps(algorithm)
        def attack(
            model: nn.Module | Oracle,
            x: Tensor,
            y: Tensor,
            threat: ThreatModel,
            *,
            target: Tensor | None = None,
            seed: int | SampleRNG = 0,
            **params: Any,
        ) -> AttackResult:
            return run_attack(spec, model, x, y, threat, target=target, seed=seed, **params)

        head = list(inspect.signature(attack, follow_wrapped=False).parameters.values())[:6]
        tail = [
            inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v)
            for k, v in defaults.items()
        ]
        attack.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            head + tail, return_annotation=AttackResult
        )
        spec = AttackSpec(
            name, attack, algorithm, norms, needs, minimal, targeted, defaults, doc, check,
            extras, resolve,
        )  # fmt: skip
        ATTACKS.add(name, spec, description=doc)
        return attack

    return deco


def get_attack(name: str) -> AttackSpec:
    """The :class:`AttackSpec` registered under ``name``."""
    spec: AttackSpec = ATTACKS.get(name)
    return spec


def run_attack(
    spec: AttackSpec,
    model: nn.Module | Oracle,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    *,
    target: Tensor | None = None,
    seed: int | SampleRNG = 0,
    **params: Any,
) -> AttackResult:
    """Run a registered attack through the door, the algorithm and :func:`finalize` (module
    docstring); this is what every public attack function calls."""
    if not isinstance(threat, ThreatModel):
        raise ConfigError(
            f"threat must be an advlab.ThreatModel, got {type(threat).__name__}; "
            "e.g. ThreatModel('linf', 0.3)"
        )
    if threat.norm not in spec.norms:
        raise ConfigError(
            f"attack {spec.name!r} supports norms {', '.join(spec.norms)}, not {threat.norm!r}"
        )
    kwargs = spec.resolve(params)
    if target is not None and not spec.targeted:
        raise ConfigError(
            f"{spec.name} is untargeted by design; drop target=, or use a targeted attack such "
            "as 'pgd', 'cw-l2' or 'jsma'"
        )
    if spec.check is not None:
        spec.check(threat, **kwargs)
    if spec.resolve_defaults is not None and threat.eps > 0:
        kwargs = spec.resolve_defaults(threat, kwargs)
    oracle = as_oracle(model)
    oracle.require(spec.needs, f"attack {spec.name!r}")
    prepare(x, y, threat, target)
    run = AttackRun(
        spec.name, oracle, x, y, threat, target, as_sample_rng(seed, x.shape[0], x.device)
    )
    try:
        found: Mapping[str, Tensor] = {}
        if threat.eps > 0:
            try:
                found = spec.algorithm(run, **kwargs) or {}
            except BudgetExhausted as e:  # the whole call stops: every sample is cut short
                run.stop_reason = str(e)
                run.exhausted[:] = True
        extras = dict(found)
        result = finalize(run, params=kwargs)
        if spec.extras is not None:
            extras.update(spec.extras(run.x, result.x_adv))
        return replace(result, extras=extras)
    finally:
        run.close()


def check_classes(num_classes: int, y: Tensor, target: Tensor | None) -> None:
    """Labels and targets must be class indices of a model with ``num_classes`` classes."""
    for what, t in (("label", y), ("target", target)):
        if t is not None and t.numel() and int(t.max()) >= num_classes:
            raise InputError(
                f"{what} {int(t.max())} is out of range for a model with {num_classes} classes"
            )


def check_target(target: Tensor | None, y: Tensor) -> None:
    """Validate targets of a targeted attack: one per sample, none equal to the true label."""
    if target is None:
        return
    if not isinstance(target, Tensor) or target.shape != y.shape:
        raise InputError(f"target must be a tensor of shape {tuple(y.shape)}, one class per sample")
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise InputError(f"target must be an integer tensor, got dtype {target.dtype}")
    if (target == y).any():
        raise InputError(
            "a target equals the true label for some samples; a targeted attack needs a different "
            "class (see advlab.attacks.select_targets)"
        )
    if (target < 0).any():
        raise InputError("targets must be non-negative class indices")


def check_positive(**params: float) -> None:
    """Raise ConfigError for any parameter that is not > 0."""
    for k, v in params.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
            raise ConfigError(f"{k} must be > 0, got {v!r}")


def check_count(**params: int) -> None:
    """Raise ConfigError for any count that is not an integer >= 1."""
    for k, v in params.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{k} must be an integer >= 1, got {v!r}")


def prepare(x: Tensor, y: Tensor, threat: ThreatModel, target: Tensor | None) -> None:
    """The door every attack goes through: validate inputs, labels and targets."""
    check_inputs(x, y, threat)
    if y.device != x.device:
        raise InputError(f"labels are on {y.device} but inputs on {x.device}; move them together")
    check_target(target, y)


#: Minimal-perturbation attacks accept a point only with a logit margin of at least this
#: fraction of the two logits it compares (see :func:`decisive`).
MARGIN_RTOL = 1e-3


def noise_floor(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """``(B,)`` the smallest margin that counts as a success for a minimal-perturbation attack:
    ``MARGIN_RTOL * max(1, |z_a|, |z_b|)`` for the two logits the margin compares.

    Float round-off in a model's logits changes with the batch size, the kernel and the machine
    (about 1e-7 of their size in float32 on a CPU). A point whose margin is within that of 0 is
    adversarial in one batch and not in another; a margin of 1e-3 of the logits' size is far
    above the round-off and costs a negligible extra distance.
    """
    z = logits.detach()
    cls = y if target is None else target
    own = z.gather(1, cls[:, None]).squeeze(1).abs()
    other = z.scatter(1, cls[:, None], float("-inf")).amax(dim=1).abs()
    return MARGIN_RTOL * torch.maximum(torch.maximum(own, other), torch.ones_like(own))


def decisive(
    logits: Tensor, y: Tensor, target: Tensor | None = None, confidence: float = 0.0
) -> Tensor:
    """``(B,)`` bool: the point succeeds with a margin of at least ``max(confidence,``
    :func:`noise_floor` ``)``, so that any batch, kernel or machine agrees that it succeeds.

    The rule of every minimal-perturbation attack for accepting a point: they search for the
    smallest perturbation, which puts their answer on the decision boundary, where round-off
    alone would otherwise decide.
    """
    need = torch.clamp(noise_floor(logits, y, target), min=confidence)
    return margin(logits.detach(), y, target) >= need


def margin(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """Per-sample logit margin, positive exactly when the attack succeeds.

    Untargeted: ``max_{j != y} z_j - z_y``. Targeted: ``z_t - max_{j != t} z_j``.
    (Carlini & Wagner 2017, objective f6.)
    """
    cls = y if target is None else target
    own = logits.gather(1, cls[:, None]).squeeze(1)
    other = logits.scatter(1, cls[:, None], float("-inf")).amax(dim=1)
    return other - own if target is None else own - other


LOSSES = ("ce", "margin")


def attack_loss(logits: Tensor, y: Tensor, target: Tensor | None, loss: str) -> Tensor:
    """Per-sample loss that the attacker *maximizes*."""
    if loss == "ce":
        if target is None:
            return F.cross_entropy(logits, y, reduction="none")
        return -F.cross_entropy(logits, target, reduction="none")
    if loss == "margin":
        return margin(logits, y, target)
    raise ConfigError(f"unknown loss {loss!r}; use one of {', '.join(LOSSES)}")


def finalize(run: AttackRun, *, params: Mapping[str, Any]) -> AttackResult:
    """Project :attr:`AttackRun.best` onto the threat set, assert containment, re-check success
    with one verification query per sample. The single exit of every attack.

    Samples that a query budget stopped (:attr:`AttackRun.exhausted`) and that did not succeed
    are flagged in :attr:`AttackResult.exhausted`, with the reason in ``stopped``.

    Raises:
        RuntimeError: if the projected output is still outside the threat set (a bug in advlab).
    """
    x, y, threat, target = run.x, run.y, run.threat, run.target
    x_adv = threat.project(run.best.detach().to(x.dtype), x)
    inside = threat.contains(x_adv, x)
    if not bool(inside.all()):
        bad = int((~inside).sum())
        raise RuntimeError(f"internal error: {run.name} left {bad} outputs outside {threat}")
    pred = run.verify(x_adv)
    success = pred == target if target is not None else pred != y
    exhausted = run.exhausted & ~success
    return AttackResult(
        attack=run.name,
        params=dict(params),
        threat=threat,
        x_adv=x_adv,
        success=success,
        norms=threat.norms(x_adv - x),
        queries=run.queries.clone(),
        pred=pred,
        label=y,
        target=target,
        stopped=run.stop_reason if bool(exhausted.any()) else None,
        exhausted=exhausted,
    )


def probe(model: nn.Module | Oracle, x: Tensor, num_classes: int | None = None) -> Oracle:
    """Query ``model`` on the first two samples of ``x`` before any long work: it must run on
    them and return valid outputs, with ``num_classes`` classes when given. Returns its oracle.

    Raises:
        InputError: the model cannot process inputs of this shape or dtype.
        ModelOutputError: the outputs are malformed or have the wrong number of classes.
    """
    from advlab.errors import ModelOutputError

    oracle = as_oracle(model)
    oracle.labels(x[:2])
    c = oracle.num_classes
    if num_classes is not None and c is not None and c != num_classes:
        raise ModelOutputError(
            f"the model returns {c} scores but the data has {num_classes} classes; "
            "use a model trained for this dataset"
        )
    return oracle
