"""The box-constrained L-BFGS attack of Szegedy et al. (L2).

Reference:
    Szegedy, Zaremba, Sutskever, Bruna, Erhan, Goodfellow & Fergus 2014, "Intriguing properties
    of neural networks" (ICLR), Section 4.1.
    Byrd, Lu, Nocedal & Zhu 1995, "A Limited Memory Algorithm for Bound Constrained
    Optimization" (L-BFGS-B, the solver used here through SciPy).

L-BFGS-B is a sequential, host-side solver, so this attack has a NumPy boundary: every
function evaluation moves the points to the host and back. To keep the model batched anyway,
one solver runs per sample in its own thread, and the evaluations the solvers ask for are
answered together by one batched forward and backward pass (:func:`lockstep_minimize`).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator

import numpy as np
import scipy.optimize
import torch
from torch import Tensor

from advlab.attacks.base import (
    AttackRun,
    check_count,
    check_positive,
    decisive,
    register_attack,
)
from advlab.errors import ConfigError
from advlab.threat import ThreatModel

#: ``evaluate(ids, points) -> (values, gradients)`` for a batch of the solvers' requests.
BatchOracle = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """Keep NumPy's BLAS to one thread while the solver threads run.

    L-BFGS-B makes many tiny BLAS calls; a multi-threaded BLAS under several solver threads
    oversubscribes the cores and runs about ten times slower. The limit is lifted on exit.
    threadpoolctl comes with scikit-learn; without it this does nothing.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


class _Aborted(Exception):
    """Raised inside a solver thread when the batch evaluation failed elsewhere."""


def lockstep_minimize(
    starts: np.ndarray,
    lower: float,
    upper: float,
    evaluate: BatchOracle,
    *,
    max_iter: int,
) -> np.ndarray:
    """Minimize ``n`` independent box-constrained problems with L-BFGS-B, evaluated in batches.

    Solver ``i`` runs ``scipy.optimize.minimize(method="L-BFGS-B")`` from ``starts[i]`` in a
    thread of its own. When a solver needs ``(f_i(z), grad f_i(z))`` it posts ``z`` and waits;
    once every live solver is waiting, the posted points go to ``evaluate`` together and the
    answers are handed back. Each solver keeps its own state (curvature pairs, line search,
    stopping test), so the result is what ``n`` separate runs would give, with the model called
    once per round instead of once per sample. An exception in ``evaluate`` or in a solver stops
    all solvers and is re-raised here.

    Shape:
        starts: ``(n, D)`` float64. ``evaluate`` gets ``(m,)`` int ids and ``(m, D)`` points and
        returns ``(m,)`` values and ``(m, D)`` gradients. Returns the ``(n, D)`` minimizers.
    """
    n = starts.shape[0]
    cv = threading.Condition()
    pending: dict[int, np.ndarray] = {}
    answers: dict[int, tuple[float, np.ndarray]] = {}
    errors: list[BaseException] = []
    live = [n]
    out = starts.copy()

    def fun(i: int, z: np.ndarray) -> tuple[float, np.ndarray]:
        with cv:
            if errors:
                raise _Aborted
            pending[i] = np.array(z, dtype=np.float64)
            cv.notify_all()
            while i not in answers and not errors:
                cv.wait()
            if i not in answers:
                raise _Aborted
            return answers.pop(i)

    def solve(i: int) -> None:
        try:
            res = scipy.optimize.minimize(
                lambda z: fun(i, z), starts[i], jac=True, method="L-BFGS-B",
                bounds=scipy.optimize.Bounds(lower, upper),
                options={"maxiter": max_iter, "maxfun": 2 * max_iter + 10},
            )  # fmt: skip
            out[i] = res.x
        except _Aborted:
            pass
        except BaseException as e:  # surfaced in the calling thread
            with cv:
                errors.append(e)
        finally:
            with cv:
                live[0] -= 1
                cv.notify_all()

    threads = [threading.Thread(target=solve, args=(i,), daemon=True) for i in range(n)]
    with _single_threaded_blas():
        _serve(threads, cv, pending, answers, errors, live, evaluate)
    if errors:
        raise errors[0]
    return out


def _serve(
    threads: list[threading.Thread],
    cv: threading.Condition,
    pending: dict[int, np.ndarray],
    answers: dict[int, tuple[float, np.ndarray]],
    errors: list[BaseException],
    live: list[int],
    evaluate: BatchOracle,
) -> None:
    """Start the solver threads and answer their requests in batches until all have finished."""
    for t in threads:
        t.start()
    try:
        while True:
            with cv:
                while len(pending) < live[0] and not errors:
                    cv.wait()
                if errors or live[0] == 0:
                    break
                ids = np.array(sorted(pending), dtype=np.int64)
                points = np.stack([pending.pop(int(i)) for i in ids])
            values, grads = evaluate(ids, points)
            with cv:
                for j, i in enumerate(ids):
                    answers[int(i)] = (float(values[j]), np.asarray(grads[j], dtype=np.float64))
                cv.notify_all()
    except BaseException as e:
        with cv:
            errors.append(e)
            cv.notify_all()
        raise
    finally:
        for t in threads:
            t.join()


def _loss(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """Per-sample loss the attack minimizes: cross-entropy of the target, or ``-log(1 - p_y)``."""
    lse = logits.logsumexp(dim=1)
    if target is not None:
        return lse - logits.gather(1, target[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf")).logsumexp(dim=1)
    return lse - others


def _check(threat: ThreatModel, *, initial_const: float, c_steps: int, max_iter: int) -> None:
    check_count(c_steps=c_steps, max_iter=max_iter)
    check_positive(initial_const=initial_const)
    if not math.isfinite(initial_const):
        raise ConfigError(f"initial_const must be finite, got {initial_const!r}")


@register_attack("lbfgs", norms=("l2",), minimal=True, check=_check)
def lbfgs(
    run: AttackRun, *, initial_const: float = 0.1, c_steps: int = 8, max_iter: int = 100
) -> None:
    """Box-constrained L-BFGS (Szegedy et al. 2014): minimize ``c ||d||_2^2 + loss(x + d)``.

    For each value of ``c`` the problem ``min c * ||x' - x||_2^2 + loss(x')`` subject to
    ``lower <= x' <= upper`` is solved with L-BFGS-B (at most ``max_iter`` iterations, starting
    at ``x``). A larger ``c`` weighs the distortion more, so the paper's line search over ``c``
    is done per sample as a geometric bisection: ``c`` grows tenfold after a round whose
    minimizer is adversarial and shrinks tenfold after one that is not, until both outcomes are
    seen, and then moves to the geometric mean of the largest successful and the smallest
    failed ``c``. Every point the solvers evaluate is checked (its logits are computed anyway),
    and the adversarial point of smallest L2 norm over all rounds is returned.

    The loss is the cross-entropy of the target class (the paper's ``loss_f(x + r, l)``). The
    paper's attack is targeted; with ``target=None`` the loss is ``-log(1 - p_y)``, the
    cross-entropy of "any class but ``y``", which, unlike ``-CE(y)``, is bounded below and stops
    pulling once the sample is confidently misclassified.

    Runs on the host: see the module docstring. Each solver lives in a thread, so the batch
    size is also the number of threads.

    Args:
        initial_const: the first ``c`` tried for every sample.
        c_steps: rounds of the search over ``c`` (one L-BFGS-B solve each).
        max_iter: L-BFGS-B iterations per solve.

    Call: ``lbfgs(model, x, y, threat, *, target=None, **params)`` with an ``l2`` threat model,
    usually ``eps = inf``; with a finite ``eps`` the result is projected onto the ball and success
    re-checked. ``target``: ``(B,)`` target classes; ``None`` for the untargeted loss above.
    Deterministic. A per-sample query budget stops the whole batch at the first sample out of
    budget.

    Shape:
        x: ``(B, *)``; the output matches.

    Returns:
        AttackResult; failures keep the original input. ``queries`` counts forward+backward
        passes per sample, plus one forward pass per round to classify the minimizer.

    Example:
        >>> res = lbfgs(model, x, y, ThreatModel("l2", math.inf), target=t)
        >>> res.norms[res.success].mean()
    """
    x, y, threat, target = run.x, run.y, run.threat, run.target
    b = x.shape[0]
    flat = x.reshape(b, -1)
    logits0 = run.scores(x)

    def adversarial(logits: Tensor, rows: Tensor) -> Tensor:
        return decisive(logits, y[rows], None if target is None else target[rows])

    best = run.best.view(b, -1)
    best_norm = torch.full((b,), math.inf, dtype=flat.dtype, device=x.device)
    best_norm[adversarial(logits0, torch.arange(b, device=x.device))] = 0.0
    todo = torch.nonzero(best_norm > 0).squeeze(1)  # samples not adversarial already
    n = todo.numel()
    c = torch.full((n,), float(initial_const), dtype=torch.float64)
    c_ok = torch.zeros(n, dtype=torch.float64)
    c_bad = torch.full((n,), math.inf, dtype=torch.float64)
    x_t, ts = flat[todo], target[todo] if target is not None else None

    def evaluate(ids: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sel = torch.as_tensor(ids, device=x.device)
        rows = todo[sel]
        z = torch.as_tensor(points, device=x.device).to(x.dtype).requires_grad_(True)
        logits = run.scores(z.view(-1, *x.shape[1:]), rows, grad=True)
        sq = (z - x_t[sel]).pow(2).sum(dim=1)
        tsel = ts[sel] if ts is not None else None
        obj = c[torch.as_tensor(ids)].to(device=x.device, dtype=x.dtype) * sq + _loss(
            logits, y[rows], tsel
        )
        (g,) = torch.autograd.grad(obj.sum(), z)
        _keep_best(z.detach(), sq.detach().sqrt(), adversarial(logits.detach(), rows), rows)
        return obj.detach().double().cpu().numpy(), g.double().cpu().numpy()

    def _keep_best(z: Tensor, norm: Tensor, adv: Tensor, rows: Tensor) -> None:
        better = adv & (norm < best_norm[rows])
        best[rows[better]] = z[better]
        best_norm[rows[better]] = norm[better]

    starts = x_t.double().cpu().numpy()
    for _ in range(c_steps if n else 0):
        sol = lockstep_minimize(starts, threat.lower, threat.upper, evaluate, max_iter=max_iter)
        z = torch.as_tensor(sol, device=x.device).to(x.dtype).clamp(threat.lower, threat.upper)
        logits = run.scores(z.view(-1, *x.shape[1:]), todo)
        ok = adversarial(logits, todo)
        _keep_best(z, (z - x_t).norm(dim=1), ok, todo)
        ok_h = ok.cpu()
        c_ok = torch.where(ok_h, torch.maximum(c_ok, c), c_ok)
        c_bad = torch.where(ok_h, c_bad, torch.minimum(c_bad, c))
        c = torch.where(
            torch.isinf(c_bad), c * 10, torch.where(c_ok == 0, c / 10, (c_ok * c_bad).sqrt())
        )
