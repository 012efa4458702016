"""Confidence intervals for the proportions an evaluation reports (accuracy, robust accuracy).

Reference:
    Wilson 1927, "Probable Inference, the Law of Succession, and Statistical Inference".
    Brown, Cai & DasGupta 2001, "Interval Estimation for a Binomial Proportion" (why Wilson and
    not the normal-approximation interval, which collapses to a point at 0% and 100%).
"""

from __future__ import annotations

import math
from statistics import NormalDist

from advlab.errors import ConfigError


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``k / n``.

    The interval is the set of proportions ``p`` for which the observed ``k`` is not rejected by
    the normal score test at level ``1 - confidence``:

        ``(p_hat + z^2/2n -+ z * sqrt(p_hat (1 - p_hat) / n + z^2 / 4n^2)) / (1 + z^2/n)``

    with ``z`` the ``(1 + confidence) / 2`` normal quantile. Unlike the textbook
    ``p_hat -+ z * sqrt(p_hat (1 - p_hat) / n)`` it stays inside ``[0, 1]`` and has non-zero
    width at ``k = 0`` and ``k = n``, which is where robust accuracies often sit.

    Args:
        k: number of successes (e.g. samples still classified correctly), ``0 <= k <= n``.
        n: number of trials (samples).
        confidence: coverage of the interval, in ``(0, 1)``.

    Returns:
        ``(low, high)`` with ``0 <= low <= k/n <= high <= 1``. With ``n = 0`` there is no data
        and the interval is the whole range ``(0.0, 1.0)``.

    Raises:
        ConfigError: for counts that are not integers with ``0 <= k <= n``, or a confidence
            outside ``(0, 1)``.

    Example:
        >>> wilson_interval(5, 10)
        (0.2365..., 0.7634...)
    """
    for name, v in (("k", k), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"{name} must be a non-negative integer count, got {v!r}")
    if k > n:
        raise ConfigError(f"k must be at most n, got k={k}, n={n}")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be in (0, 1), e.g. 0.95, got {confidence!r}")
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    z2 = z * z
    p = k / n
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n)) / denom
    low = 0.0 if k == 0 else max(0.0, center - half)
    high = 1.0 if k == n else min(1.0, center + half)
    return low, high
