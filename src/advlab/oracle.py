"""The oracle: the one door through which every model query passes.

Attacks, target selection and the evaluation engine never call a model directly; they ask an
:class:`Oracle`. The oracle says how much it reveals, counts every image it answers, and refuses
a batch that would overshoot a query budget *before* sending it.

**Access levels** (:class:`Access`), each revealing everything the ones below it do:

* ``labels``: the predicted class only (a decision-based threat model);
* ``topk``: the ``k`` most likely classes, with their scores where the model gives them;
* ``scores``: one score per class, logits or probabilities (:attr:`Oracle.output` says which);
* ``gradients``: scores with the autograd graph attached: a white-box model.

An attack declares the level it needs; asking a label-only oracle for scores or gradients raises
:class:`~advlab.errors.AccessError` at the door, naming the level the attack needs.

**Counting.** One query is one image sent to the model, with or without a backward pass through
it. :attr:`Oracle.used` counts every image the oracle ever answered; an attack's per-sample
counts (:attr:`advlab.results.AttackResult.queries`) are kept by its
:class:`~advlab.attacks.base.AttackRun`, which sends everything through this class.

**Budgets** (:class:`QueryBudget`): ``total`` caps :attr:`Oracle.used` over the oracle's life;
``per_sample`` caps what one attack call may spend on one sample. Both are checked before a batch
is sent, so neither is ever exceeded by a single image. Queries reserved with :meth:`reserve`
(the final verification pass of an attack) count against ``total`` from the moment they are
reserved.

**Adapters**: :class:`ModuleOracle` (a torch module: white-box), :class:`CallableOracle` (any
function returning scores, top-k or labels), :class:`SklearnOracle` (``predict_proba`` or
``predict``) and :class:`OnnxOracle` (an ONNX Runtime session). A model behind an HTTP API is one
more subclass: it implements :meth:`Oracle._call` for a batch, and budgets, counting and access
checks come from this base class.
"""

from __future__ import annotations

import enum
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from advlab.errors import (
    AccessError,
    AdvlabError,
    BudgetExhausted,
    ConfigError,
    InputError,
    ModelOutputError,
)


class Access(enum.IntEnum):
    """How much an oracle reveals per query; each level includes those below it."""

    LABELS = 1
    TOPK = 2
    SCORES = 3
    GRADIENTS = 4

    @classmethod
    def parse(cls, value: Access | str) -> Access:
        """An :class:`Access` from itself or its lower-case name (``"scores"``)."""
        if isinstance(value, Access):
            return value
        try:
            return cls[str(value).upper()]
        except KeyError:
            names = ", ".join(a.name.lower() for a in cls)
            raise ConfigError(f"unknown access level {value!r}; use one of {names}") from None

    def __str__(self) -> str:
        return self.name.lower()


#: What a score means: raw logits or probabilities that sum to one.
OUTPUTS: tuple[str, ...] = ("logits", "probabilities")


def _check_count(name: str, v: int | None) -> None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
        raise ConfigError(f"{name} must be an integer >= 1 or None (no limit), got {v!r}")


@dataclass(frozen=True)
class QueryBudget:
    """Limits on the images an oracle may answer.

    Attributes:
        per_sample: most queries one attack call may spend on one sample, its final
            verification included (so an attack has ``per_sample - 1`` for its search).
        total: most images the oracle answers over its life, across attacks and calls.
    """

    per_sample: int | None = None
    total: int | None = None

    def __post_init__(self) -> None:
        _check_count("per_sample", self.per_sample)
        _check_count("total", self.total)


@dataclass(frozen=True)
class TopK:
    """The ``k`` most likely classes per sample, best first.

    Attributes:
        indices: ``(B, k)`` int64 class indices.
        values: ``(B, k)`` their scores, or ``None`` where the model reveals only the classes.
    """

    indices: Tensor
    values: Tensor | None = None


class Oracle:
    """Base class of every model advlab queries (see the module docstring).

    Subclasses implement :meth:`_call`, which answers one batch at their :attr:`native` level;
    everything else (access checks, budgets, counting, output validation, reducing scores to
    top-k and labels) happens here.

    Args:
        access: the most this oracle reveals (at most what the adapter can give).
        output: ``"logits"`` or ``"probabilities"``, what its scores are.
        budget: query limits; default none.
        num_classes: the number of classes, if known before the first query.
    """

    #: The level :meth:`_call` answers at: ``SCORES`` (a ``(B, C)`` tensor), ``TOPK`` (a
    #: :class:`TopK`) or ``LABELS`` (a ``(B,)`` tensor). Gradients come with ``SCORES``.
    native: Access = Access.SCORES
    #: The highest level the adapter supports.
    ceiling: Access = Access.SCORES

    def __init__(
        self,
        *,
        access: Access | str | None = None,
        output: str = "logits",
        budget: QueryBudget | None = None,
        num_classes: int | None = None,
    ) -> None:
        level = self.ceiling if access is None else Access.parse(access)
        if level > self.ceiling:
            raise AccessError(
                f"{type(self).__name__} can reveal at most {self.ceiling}, not {level}"
            )
        if output not in OUTPUTS:
            raise ConfigError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        if budget is not None and not isinstance(budget, QueryBudget):
            raise ConfigError(f"budget must be an advlab QueryBudget, got {type(budget).__name__}")
        _check_count("num_classes", num_classes)
        self.access = level
        self.output = output
        self.budget = budget or QueryBudget()
        self.num_classes: int | None = num_classes
        #: Images answered so far, over the oracle's life.
        self.used = 0
        self._reserved = 0
        self._probed = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(access={self.access}, used={self.used})"

    # -- what adapters implement ---------------------------------------------------------------

    def _call(self, x: Tensor, grad: bool) -> Tensor | TopK:
        """Answer one batch at :attr:`native` level (scores with a graph when ``grad``)."""
        raise NotImplementedError

    # -- budgets -------------------------------------------------------------------------------

    @property
    def remaining(self) -> float:
        """Images the total budget still allows, reservations deducted (``inf`` without one)."""
        if self.budget.total is None:
            return math.inf
        return float(self.budget.total - self.used - self._reserved)

    def reserve(self, n: int) -> None:
        """Set ``n`` queries aside (e.g. an attack's verification pass); raises if they don't fit."""
        if n > self.remaining:
            raise BudgetExhausted(
                f"the oracle's total budget of {self.budget.total} queries has "
                f"{max(0, int(self.remaining))} left, fewer than the {n} this needs; raise "
                "QueryBudget.total or query fewer samples"
            )
        self._reserved += n

    def release(self, n: int) -> None:
        """Return ``n`` reserved queries that were not used."""
        self._reserved = max(0, self._reserved - n)

    # -- access --------------------------------------------------------------------------------

    def require(self, level: Access | str, who: str = "this operation") -> None:
        """Raise :class:`AccessError` unless the oracle reveals at least ``level``."""
        level = Access.parse(level)
        if self.access >= level:
            return
        hint = {
            Access.GRADIENTS: "pass the torch module itself (a white-box model) or use a "
            "black-box attack",
            Access.SCORES: "use a decision-based attack, or an oracle that returns scores",
            Access.TOPK: "use a decision-based attack, or an oracle that returns top-k classes",
        }.get(level, "")
        raise AccessError(
            f"{who} needs {level}, but this {type(self).__name__} reveals only {self.access}; "
            f"{hint}"
        )

    # -- queries -------------------------------------------------------------------------------

    def query(
        self,
        x: Tensor,
        *,
        level: Access | str = Access.SCORES,
        k: int = 1,
        grad: bool = False,
        reserved: bool = False,
    ) -> Tensor | TopK:
        """Answer a batch at ``level``: every other query method comes through here.

        Args:
            x: ``(B, *)`` inputs.
            level: ``SCORES`` returns ``(B, C)`` scores, ``TOPK`` a :class:`TopK` of ``k``
                classes, ``LABELS`` ``(B,)`` int64 predictions.
            k: for ``TOPK``.
            grad: keep the autograd graph (``SCORES`` only; needs ``GRADIENTS`` access).
            reserved: take the images from a :meth:`reserve` made earlier.

        Raises:
            AccessError: the oracle does not reveal ``level``.
            BudgetExhausted: the batch would exceed the total budget (nothing was sent).
            ModelOutputError: the model's answer is malformed (wrong shape, NaN).
        """
        level = Access.parse(level)
        if grad and level != Access.SCORES:
            raise ConfigError("grad=True needs level='scores'")
        self.require(Access.GRADIENTS if grad else level, "this query")
        n = int(x.shape[0])
        if reserved:
            if n > self._reserved:
                raise RuntimeError(f"internal error: {n} queries taken from a reserve of {self._reserved}")  # fmt: skip
        elif n > self.remaining:
            raise BudgetExhausted(
                f"total query budget of {self.budget.total} reached ({self.used} used"
                + (f", {self._reserved} reserved" if self._reserved else "")
                + f"); the next batch of {n} was not sent"
            )
        out = self._probe(x, grad) if not self._probed else self._call(x, grad)
        if reserved:
            self._reserved -= n
        self.used += n  # the images were sent, whatever came back
        return self._reduce(self._validate(out, n, x.device), level, k)

    def scores(self, x: Tensor, *, grad: bool = False) -> Tensor:
        """``(B, C)`` scores (logits or probabilities: see :attr:`output`)."""
        out = self.query(x, level=Access.SCORES, grad=grad)
        assert isinstance(out, Tensor)
        return out

    def topk(self, x: Tensor, k: int) -> TopK:
        """The ``k`` most likely classes per sample."""
        out = self.query(x, level=Access.TOPK, k=k)
        assert isinstance(out, TopK)
        return out

    def labels(self, x: Tensor, *, batch_size: int | None = None) -> Tensor:
        """``(B,)`` int64 predicted classes, asked ``batch_size`` images at a time (default:
        all at once)."""
        if batch_size is not None and x.shape[0] > batch_size:
            return torch.cat([self.labels(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])  # fmt: skip
        out = self.query(x, level=Access.LABELS)
        assert isinstance(out, Tensor)
        return out

    # -- internals -----------------------------------------------------------------------------

    def _probe(self, x: Tensor, grad: bool) -> Tensor | TopK:
        """The first call: model errors become a one-line :class:`InputError`."""
        try:
            out = self._call(x, grad)
        except (torch.OutOfMemoryError, NotImplementedError, AdvlabError):
            raise
        except (RuntimeError, ValueError, TypeError, IndexError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(
                f"the model cannot process inputs of shape {tuple(x.shape[1:])} and dtype "
                f"{x.dtype} ({first}); pass inputs of the shape and dtype it was built for"
            ) from e
        self._probed = True
        return out

    def _validate(self, out: Tensor | TopK, n: int, device: torch.device) -> Tensor | TopK:
        name = type(self).__name__
        if self.native == Access.LABELS:
            if not isinstance(out, Tensor) or out.shape != (n,) or out.is_floating_point():
                raise ModelOutputError(
                    f"{name} must answer one integer label per sample, shape ({n},), got "
                    f"{_describe(out)}"
                )
            return out.to(device=device, dtype=torch.long)
        if self.native == Access.TOPK:
            if not isinstance(out, TopK) or out.indices.dim() != 2 or out.indices.shape[0] != n:
                raise ModelOutputError(
                    f"{name} must answer a TopK with (batch={n}, k) class indices, got "
                    f"{_describe(out)}"
                )
            return out
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != n:
            raise ModelOutputError(
                f"the model must return scores of shape (batch, classes) = ({n}, C), got "
                f"{_describe(out)}; wrap it so that it returns one score per class"
            )
        c = int(out.shape[1])
        if c < 2:
            raise ModelOutputError(
                f"the model returns {c} score per sample; classifiers need >= 2 classes "
                "(for a binary model, return [-z, z] or [0, z])"
            )
        if self.num_classes is not None and c != self.num_classes:
            raise ModelOutputError(
                f"the model returned {c} scores per sample after {self.num_classes} earlier; "
                "its output size must not change"
            )
        if not bool(torch.isfinite(out.detach()).all()):
            raise ModelOutputError(
                "the model returned NaN or inf scores; check its weights and input preprocessing"
            )
        self.num_classes = c
        return out

    def _reduce(self, out: Tensor | TopK, level: Access, k: int) -> Tensor | TopK:
        if level == Access.SCORES:
            return out
        if isinstance(out, TopK):
            if level == Access.LABELS:
                return out.indices[:, 0].long()
            if k > out.indices.shape[1]:
                raise AccessError(
                    f"asked for the top {k} classes of an oracle that reveals {out.indices.shape[1]}"
                )
            vals = out.values[:, :k] if out.values is not None else None
            return TopK(out.indices[:, :k].long(), vals)
        if level == Access.LABELS:
            return out if self.native == Access.LABELS else out.detach().argmax(dim=1)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= out.shape[1]:
            raise ConfigError(f"k must be an integer in [1, {out.shape[1]}], got {k!r}")
        top = out.detach().topk(k, dim=1)
        return TopK(top.indices, top.values)


def _describe(out: Any) -> str:
    if isinstance(out, Tensor):
        return f"a tensor of shape {tuple(out.shape)} and dtype {out.dtype}"
    if isinstance(out, TopK):
        return f"TopK(indices of shape {tuple(out.indices.shape)})"
    return type(out).__name__


class ModuleOracle(Oracle):
    """A torch module: a white-box model (``access="gradients"`` by default).

    The module is used as it is: its train/eval mode is never changed, and it runs on the device
    of its parameters; inputs must already be there. The first query turns a failure of the
    module (wrong input shape or dtype) into a one-line :class:`~advlab.errors.InputError`.

    Args:
        model: a classifier returning ``(B, C)`` logits (or probabilities: ``output=``).
        access: reveal less than gradients, e.g. ``"labels"`` to test decision-based attacks.
        output: ``"logits"`` (default) or ``"probabilities"``.
        budget: query limits.
        input_shape: the per-sample shape the model takes, e.g. ``(1, 28, 28)``; when given,
            every query checks it first and names it in the error.
    """

    native = Access.SCORES
    ceiling = Access.GRADIENTS

    def __init__(
        self,
        model: nn.Module,
        *,
        access: Access | str | None = None,
        output: str = "logits",
        budget: QueryBudget | None = None,
        input_shape: tuple[int, ...] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"ModuleOracle needs a torch nn.Module, got {type(model).__name__}")
        super().__init__(access=access, output=output, budget=budget)
        self.model = model
        self.input_shape = tuple(int(s) for s in input_shape) if input_shape else None
        p = next(iter(model.parameters()), None)
        self._param = (p.dtype, p.device) if p is not None else None

    def _call(self, x: Tensor, grad: bool) -> Tensor:
        if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
            raise InputError(
                f"the model takes inputs of shape {self.input_shape}, got "
                f"{tuple(x.shape[1:])}; reshape the data or use a model built for it"
            )
        if not self._probed and self._param is not None:
            dtype, device = self._param
            if x.dtype != dtype:
                raise InputError(
                    f"the inputs are {x.dtype} but the model computes in {dtype}; convert "
                    f"them with x.to({dtype}) (or the model with model.to({x.dtype}))"
                )
            if x.device != device:
                raise InputError(
                    f"the inputs are on {x.device} but the model is on {device}; move them "
                    f"with x.to({str(device)!r})"
                )
        with torch.set_grad_enabled(grad):
            out: Tensor = self.model(x)
        return out


class CallableOracle(Oracle):
    """Any function of a batch: scores, top-k classes, or labels.

    Args:
        fn: called with the ``(B, *)`` batch (a torch tensor, or a NumPy array with
            ``numpy=True``). By ``returns``: ``"scores"`` -> ``(B, C)`` array-like;
            ``"topk"`` -> ``(B, k)`` class indices, or a pair ``(indices, values)``, or a
            :class:`TopK`; ``"labels"`` -> ``(B,)`` integer classes.
        returns: what ``fn`` returns (and so the most the oracle reveals).
        access: reveal less than ``returns`` (e.g. only labels of a scores function).
        output: ``"logits"`` or ``"probabilities"``, for ``returns="scores"``.
        numpy: pass ``fn`` a float32 NumPy array instead of a tensor.
        budget: query limits.
        num_classes: the class count, for top-k and label oracles (which cannot reveal it).
    """

    def __init__(
        self,
        fn: Callable[[Any], Any],
        *,
        returns: Access | str = Access.SCORES,
        access: Access | str | None = None,
        output: str = "logits",
        numpy: bool = False,
        budget: QueryBudget | None = None,
        num_classes: int | None = None,
    ) -> None:
        if not callable(fn):
            raise ConfigError(f"CallableOracle needs a callable, got {type(fn).__name__}")
        level = Access.parse(returns)
        if level == Access.GRADIENTS:
            raise AccessError(
                "a plain callable gives no gradients; wrap a torch module in ModuleOracle"
            )
        self.native = self.ceiling = level
        super().__init__(access=access, output=output, budget=budget, num_classes=num_classes)
        self.fn = fn
        self.numpy = numpy

    def _call(self, x: Tensor, grad: bool) -> Tensor | TopK:
        arg: Any = x.detach().cpu().float().numpy() if self.numpy else x.detach()
        out = self.fn(arg)
        if self.native == Access.TOPK:
            if isinstance(out, TopK):
                return TopK(_tensor(out.indices, x.device, None), _maybe(out.values, x))
            if isinstance(out, tuple) and len(out) == 2:
                return TopK(_tensor(out[0], x.device, None), _tensor(out[1], x.device, x.dtype))
            return TopK(_tensor(out, x.device, None))
        dtype = x.dtype if self.native == Access.SCORES else None
        return _tensor(out, x.device, dtype)


def _tensor(v: Any, device: torch.device, dtype: torch.dtype | None) -> Tensor:
    t = v if isinstance(v, Tensor) else torch.as_tensor(np.asarray(v))
    return t.to(device=device, dtype=dtype) if dtype is not None else t.to(device=device)


def _maybe(v: Any, like: Tensor) -> Tensor | None:
    return None if v is None else _tensor(v, like.device, like.dtype)


class SklearnOracle(Oracle):
    """A fitted scikit-learn classifier: ``predict_proba`` scores, or ``predict`` labels.

    Inputs are flattened to ``(B, D)`` float arrays. The estimator's ``classes_`` must be the
    integers ``0 .. C-1`` (fit it on integer labels), so that class indices mean the same thing
    to advlab and to the estimator.

    Args:
        estimator: a fitted classifier.
        scores: use ``predict_proba`` (True), ``predict`` (False), or ``predict_proba`` where
            the estimator has it (``None``).
        access: reveal less (``"labels"`` or ``"topk"``).
        budget: query limits.
    """

    def __init__(
        self,
        estimator: Any,
        *,
        scores: bool | None = None,
        access: Access | str | None = None,
        budget: QueryBudget | None = None,
    ) -> None:
        has_proba = hasattr(estimator, "predict_proba")
        if scores and not has_proba:
            raise AccessError(f"{type(estimator).__name__} has no predict_proba; pass scores=False")
        if not hasattr(estimator, "predict"):
            raise ConfigError(f"{type(estimator).__name__} is not a classifier (no predict)")
        use_proba = has_proba if scores is None else bool(scores)
        classes = getattr(estimator, "classes_", None)
        if classes is None:
            raise ConfigError(
                f"{type(estimator).__name__} is not fitted (no classes_); fit it first"
            )
        classes = np.asarray(classes)
        if classes.dtype.kind not in "iu" or not np.array_equal(classes, np.arange(len(classes))):
            raise ConfigError(
                f"the estimator's classes_ are {classes.tolist()[:10]}; advlab needs the classes "
                "0 .. C-1: fit it on integer labels"
            )
        self.native = self.ceiling = Access.SCORES if use_proba else Access.LABELS
        super().__init__(
            access=access, output="probabilities", budget=budget, num_classes=len(classes)
        )
        self.estimator = estimator

    def _call(self, x: Tensor, grad: bool) -> Tensor:
        flat = x.detach().reshape(x.shape[0], -1).cpu().numpy()
        if self.native == Access.SCORES:
            return _tensor(self.estimator.predict_proba(flat), x.device, x.dtype)
        return _tensor(self.estimator.predict(flat), x.device, None)


class OnnxOracle(Oracle):
    """A model exported to ONNX, run by ONNX Runtime on the CPU (needs ``onnxruntime``).

    Args:
        model: a path to a ``.onnx`` file, or an ``onnxruntime.InferenceSession``.
        output: ``"logits"`` or ``"probabilities"``, what the model's output is.
        input_name, output_name: the graph's input and output to use (default: the first).
        access: reveal less (``"labels"`` or ``"topk"``).
        budget: query limits.
        num_classes: the class count, if known before the first query.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | Any,
        *,
        output: str = "logits",
        input_name: str | None = None,
        output_name: str | None = None,
        access: Access | str | None = None,
        budget: QueryBudget | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(access=access, output=output, budget=budget, num_classes=num_classes)
        if isinstance(model, str | os.PathLike):
            try:
                import onnxruntime
            except ImportError:
                raise ConfigError(
                    "OnnxOracle needs onnxruntime; install it with pip install onnxruntime"
                ) from None
            if not os.path.exists(model):
                raise ConfigError(f"no ONNX model at {os.fspath(model)}; check the path")
            try:
                model = onnxruntime.InferenceSession(
                    os.fspath(model), providers=["CPUExecutionProvider"]
                )
            except Exception as e:
                raise ConfigError(f"cannot load the ONNX model {os.fspath(model)}: {e}") from None
        self.session = model
        self.input_name = input_name or model.get_inputs()[0].name
        self.output_name = output_name or model.get_outputs()[0].name

    def _call(self, x: Tensor, grad: bool) -> Tensor:
        arr = x.detach().cpu().float().numpy()
        (out,) = self.session.run([self.output_name], {self.input_name: arr})
        return _tensor(out, x.device, x.dtype)


def as_oracle(model: Oracle | nn.Module) -> Oracle:
    """``model`` itself if it is an :class:`Oracle`; a torch module becomes a
    :class:`ModuleOracle` (white-box)."""
    if isinstance(model, Oracle):
        return model
    if isinstance(model, nn.Module):
        return ModuleOracle(model)
    raise ConfigError(
        f"expected a torch nn.Module or an advlab Oracle, got {type(model).__name__}; wrap a "
        "function with advlab.oracle.CallableOracle(fn, returns='scores') or a scikit-learn "
        "estimator with SklearnOracle(est)"
    )
