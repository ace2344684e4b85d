"""The tempered ensemble: log-linear pooling with weights fitted on the validation split (DESIGN section 9).

``log P(x) = sum_f w_f log P_f(x) - log Z`` with ``Z = sum_x area(x) prod_f P_f(x)^w_f`` over the atoms
(here: the atom groups of the families), ``w_f >= 0``. Atoms where some ``P_f`` is 0 keep ``P = 0`` whatever
the weights. The weights maximise the mean log density at the true atom over the fitting images; images
whose truth has ``P = 0`` are left out of the fit (and counted).

The objective is concave in ``w`` (a linear term minus a log-partition function), with the closed-form
gradient ``mean_i [L(g_i) - E_Q_i L]`` and Hessian ``-mean_i Cov_Q_i(L)``, ``L = (log P_f)_f`` and ``Q_i``
the tempered density of image ``i``. :func:`fit_weights` runs a projected Newton ascent with backtracking
from the plain product ``w = 1``: deterministic, a handful of iterations for three weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from geoens.core.types import FloatArray, IntArray

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitBatch:
    """One batch of fitting images.

    Attributes:
        logp: ``families x groups x images`` log densities ``log P_f`` (``-inf`` where ``P_f = 0``).
        gt_group: Group of each image's ground truth.

    """

    logp: FloatArray
    gt_group: IntArray


@dataclass(frozen=True)
class TemperedFit:
    """Fitted weights and the fit's record.

    Attributes:
        families: The families, in weight order.
        weights: ``w_f >= 0``.
        mean_log_density: Mean log density (per km^2) at the truth with the fitted weights.
        mean_log_density_product: The same with ``w = 1`` (the plain product).
        n_fit: Images in the fit.
        n_zero_prob: Images left out because their truth has ``P = 0``.
        iterations: Newton iterations.
        converged: Whether the projected gradient fell below the tolerance.

    """

    families: tuple[str, ...]
    weights: tuple[float, ...]
    mean_log_density: float
    mean_log_density_product: float
    n_fit: int
    n_zero_prob: int
    iterations: int
    converged: bool

    def as_dict(self) -> dict[str, object]:
        """JSON-ready record."""
        return {
            "families": list(self.families),
            "weights": {f: w for f, w in zip(self.families, self.weights, strict=True)},
            "mean_log_density": self.mean_log_density,
            "mean_log_density_product": self.mean_log_density_product,
            "n_fit": self.n_fit,
            "n_zero_prob": self.n_zero_prob,
            "iterations": self.iterations,
            "converged": self.converged,
        }


def tempered_log_density(
    logp: FloatArray, area: FloatArray, weights: Sequence[float] | FloatArray
) -> FloatArray:
    """``groups x images`` log density of the tempered ensemble (``-inf`` where some ``P_f = 0``).

    Args:
        logp: ``families x groups x images`` log densities of the families.
        area: Area of each group (km^2).
        weights: ``w_f``, one per family.

    Raises:
        ValueError: If a weight is negative or not finite, or the shapes disagree.

    """
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (logp.shape[0],) or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"tempered weights must be {logp.shape[0]} finite values >= 0, got {list(w)}")
    valid = np.all(np.isfinite(logp), axis=0)
    s = np.where(valid, np.tensordot(w, np.where(valid[None], logp, 0.0), axes=1), -np.inf)
    return s - _log_partition(s, area)[None, :]


def _log_partition(s: FloatArray, area: FloatArray) -> FloatArray:
    """``log sum_x area(x) exp(s(x))`` per image (column), ``-inf`` for a column with no valid group."""
    m = np.max(s, axis=0)
    safe = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(invalid="ignore"):
        tot = area @ np.exp(s - safe[None, :])
    with np.errstate(divide="ignore"):
        return np.where(tot > 0, np.log(np.where(tot > 0, tot, 1.0)) + safe, -np.inf)


def _batch_terms(
    b: FitBatch, area: FloatArray, w: FloatArray, need_hess: bool
) -> tuple[float, FloatArray, FloatArray, int]:
    """Sum over the batch's usable images of the objective, its gradient and Hessian; and their number."""
    k, _, n = b.logp.shape
    cols = np.arange(n)
    lg = b.logp[:, b.gt_group, cols]  # families x images
    use = np.all(np.isfinite(lg), axis=0)
    if not use.any():
        return 0.0, np.zeros(k), np.zeros((k, k)), 0
    L = b.logp[:, :, use]
    lg = lg[:, use]
    valid = np.all(np.isfinite(L), axis=0)  # groups x images
    Lz = np.where(valid[None], L, 0.0)
    s = np.where(valid, np.tensordot(w, Lz, axes=1), -np.inf)
    logz = _log_partition(s, area)
    q = area[:, None] * np.exp(s - logz[None, :])  # groups x images, columns sum to 1
    mean = np.einsum("kgn,gn->kn", Lz, q)
    val = float(np.sum(w @ lg - logz))
    grad = np.sum(lg - mean, axis=1)
    hess = np.zeros((k, k))
    if need_hess:
        second = np.einsum("kgn,lgn,gn->kl", Lz, Lz, q)
        hess = -(second - mean @ mean.T)
    return val, grad, hess, int(use.sum())


def objective(
    batches: Iterable[FitBatch],
    area: FloatArray,
    weights: Sequence[float] | FloatArray,
    need_hess: bool = True,
) -> tuple[float, FloatArray, FloatArray, int, int]:
    """Mean log density at the truth over the usable images, with its gradient and Hessian.

    Returns:
        ``(value, gradient, hessian, n_used, n_zero_prob)``.

    """
    w = np.asarray(weights, dtype=np.float64)
    val, n_used, n_all = 0.0, 0, 0
    grad = np.zeros(w.size)
    hess = np.zeros((w.size, w.size))
    for b in batches:
        v, g, h, u = _batch_terms(b, area, w, need_hess)
        val += v
        grad += g
        hess += h
        n_used += u
        n_all += b.gt_group.size
    if n_used == 0:
        return float("nan"), grad, hess, 0, n_all
    return val / n_used, grad / n_used, hess / n_used, n_used, n_all - n_used


def fit_weights(
    batches: Callable[[], Iterable[FitBatch]],
    area: FloatArray,
    families: Sequence[str],
    max_iter: int = 50,
    tol: float = 1e-8,
) -> TemperedFit:
    """Fit ``w >= 0`` by projected Newton ascent of the mean log density at the truth, from ``w = 1``.

    Args:
        batches: Called once per evaluation; yields the fitting batches (the same every call).
        area: Area of each group (km^2).
        families: The families, in the order of ``FitBatch.logp``.
        max_iter: Newton iterations at most.
        tol: Stop when the projected gradient's largest entry is below this.

    Raises:
        ValueError: If no fitting image has a truth with ``P > 0``.

    """
    k = len(families)
    w = np.ones(k)
    val, grad, hess, n_used, n_zero = objective(batches(), area, w)
    if n_used == 0:
        raise ValueError("tempered fit: no fitting image has a ground truth with P > 0")
    val_product = val
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        free = ~((w <= 0) & (grad < 0))  # weights held at the bound 0
        pg = np.where(free, grad, 0.0)
        if np.max(np.abs(pg)) < tol:
            converged = True
            it -= 1
            break
        d = np.zeros(k)
        h = hess[np.ix_(free, free)]
        try:
            # the Hessian is negative semi-definite; a small ridge keeps the step defined when flat
            d[free] = np.linalg.solve(h - 1e-9 * np.eye(int(free.sum())), -pg[free])
        except np.linalg.LinAlgError:
            d[free] = pg[free]
        if float(d @ pg) <= 0:  # not an ascent direction (numerically): fall back to the gradient
            d = pg
        step, accepted = 1.0, False
        for _ in range(40):
            w_new = np.maximum(w + step * d, 0.0)
            v_new, g_new, h_new, _, _ = objective(batches(), area, w_new)
            if np.isfinite(v_new) and v_new >= val + 1e-4 * float(pg @ (w_new - w)):
                accepted = True
                break
            step /= 2.0
        if not accepted:
            converged = bool(np.max(np.abs(pg)) < 1e-5)
            break
        w, val, grad, hess = w_new, v_new, g_new, h_new
    log.info("tempered fit: weights %s, mean log density %.4f (product %.4f)", w, val, val_product)
    return TemperedFit(
        tuple(families),
        tuple(float(x) for x in w),
        float(val),
        float(val_product),
        n_used,
        n_zero,
        it,
        converged,
    )
