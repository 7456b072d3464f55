"""Moments, mode, entropy, KL and straight-through (hard) samples.

The distributions' ``mean``, ``variance``, ``covariance()``, ``mode``,
``entropy()`` and the ``hard`` option of ``rsample`` delegate here, as do the
module-level :func:`kl_divergence`, :func:`categorical_kl`, :func:`gumbel_softmax`
and :func:`gumbel_softmax_vjp`. Like the rest of the package this layer validates,
broadcasts and calls ``relaxcat._core``; the quadrature, the Newton solve, the
categorical KL and the one-hot live in ``cpp/include/relaxcat/detail/moments.hpp``.
The Monte Carlo estimators average the library's own log-densities of its own
samples here, in NumPy.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from . import _core, _threads
from . import _validation as v

__all__ = [
    "MonteCarloEstimate",
    "HardSample",
    "categorical_kl",
    "gumbel_softmax",
    "gumbel_softmax_vjp",
    "kl_divergence",
]

MonteCarloEstimate = namedtuple("MonteCarloEstimate", ["estimate", "stderr"])
HardSample = namedtuple("HardSample", ["hard", "soft"])

_NORMALIZE_LOGITS = 1
_MEAN, _VARIANCE, _COVARIANCE = 0, 1, 2
_DEFAULT_SAMPLES = 4096


def _rows(d, batch=None):
    """Normalised float64 logits ``(rows, K)`` and temperatures ``(rows,)`` of
    ``d`` broadcast to ``batch`` (default: its batch shape), and that shape."""
    batch = d.batch_shape if batch is None else tuple(batch)
    k = d.event_shape[0]
    a = np.ascontiguousarray(d._a, dtype=np.float64)
    norm = np.empty(a.shape, dtype=np.float64)
    _core.param(_NORMALIZE_LOGITS, a, norm, _threads.get_num_threads())
    logits = np.ascontiguousarray(np.broadcast_to(norm, batch + (k,)).reshape(-1, k))
    temp = np.ascontiguousarray(
        np.broadcast_to(np.asarray(d._t_rows, dtype=np.float64), batch).reshape(-1)
    )
    return logits, temp, batch


def _is_log(d) -> bool:
    return d._space == 1


# ----------------------------------------------------------------------- moments
def mean(d) -> np.ndarray:
    k = d.event_shape[0]
    logits, temp, batch = _rows(d)
    out = np.empty(logits.shape, dtype=np.float64)
    if _is_log(d):
        _core.log_mean(logits, temp, out, _threads.get_num_threads())
    else:
        _core.moments(_MEAN, logits, temp, out, None, _threads.get_num_threads())
    return out.reshape(batch + (k,)).astype(d.dtype, copy=False)


def _second(d, kind: int) -> np.ndarray:
    if _is_log(d):
        raise NotImplementedError(
            "variance and covariance of ExpRelaxedOneHotCategorical (of y = log x) are "
            "not implemented: they need E[log(S)^2] and E[G_k log S] for "
            "S = sum_j exp((a_j + G_j) / T), integrals the quadrature does not form; "
            "use RelaxedOneHotCategorical.variance for the moments of x"
        )
    k = d.event_shape[0]
    logits, temp, batch = _rows(d)
    m = np.empty(logits.shape, dtype=np.float64)
    shape = (logits.shape[0], k, k) if kind == _COVARIANCE else logits.shape
    s = np.empty(shape, dtype=np.float64)
    _core.moments(kind, logits, temp, m, s, _threads.get_num_threads())
    return s.reshape(batch + shape[1:]).astype(d.dtype, copy=False)


def variance(d) -> np.ndarray:
    return _second(d, _VARIANCE)


def covariance(d) -> np.ndarray:
    return _second(d, _COVARIANCE)


def mode(d) -> np.ndarray:
    k = d.event_shape[0]
    logits, temp, batch = _rows(d)
    out = np.empty(logits.shape, dtype=np.float64)
    failed = _core.mode(
        1 if _is_log(d) else 0, logits, temp, out, _threads.get_num_threads()
    )
    if failed:
        first = int(np.flatnonzero(np.isnan(out[:, 0]))[0])
        where = tuple(int(i) for i in np.unravel_index(first, batch)) if batch else ()
        raise RuntimeError(
            f"mode: Newton's method did not converge in {failed} of {logits.shape[0]} "
            f"rows, the first at batch index {where} (normalised logits "
            f"{np.array2string(logits[first], threshold=8)}, temperature "
            f"{float(temp[first])!r}); please report these parameters"
        )
    return out.reshape(batch + (k,)).astype(d.dtype, copy=False)


# ------------------------------------------------------------------ Monte Carlo
def _check_n(n_samples, d, batch: tuple) -> int:
    """n_samples as an int, checked, and small enough that n_samples samples of
    d over ``batch`` fit in an array."""
    from .distributions import _check_indexable

    if isinstance(n_samples, (bool, np.bool_)) or not isinstance(
        n_samples, (int, np.integer)
    ):
        raise TypeError(f"n_samples must be an int, got {type(n_samples).__name__}")
    if n_samples < 2:
        raise ValueError(
            f"n_samples must be at least 2 (for a standard error), got {n_samples}"
        )
    n = int(n_samples)
    _check_indexable(
        (n,) + batch + d.event_shape,
        f"n_samples {n} with batch_shape {batch} and event_shape {d.event_shape}",
        d.dtype.itemsize,
    )
    return n


def _log_space(d, batch=None):
    """The ExpRelaxed distribution with d's parameters (and batch), unvalidated."""
    from .distributions import ExpRelaxedOneHotCategorical

    batch = d.batch_shape if batch is None else tuple(batch)
    k = d.event_shape[0]
    logits = np.broadcast_to(d._a, batch + (k,))
    temp = np.broadcast_to(d._t_rows, batch)
    return ExpRelaxedOneHotCategorical(temp, logits=logits, validate_args=False)


def _estimate(samples: np.ndarray) -> MonteCarloEstimate:
    """Mean and standard error over the first axis (n >= 2 samples). Each
    column is divided by the power of two just above its largest |sample| and
    the results multiplied back: exact scalings, so the same bits unless a
    scaled square underflows (a deviation below 2^-537 of the largest sample,
    far under the sum's last digit), and a finite standard error where the
    squares of samples near 1e200 (an entropy at T = 1e-200) would pass the
    float64 range (a fresh-user review: inf, with NumPy's overflow warning)."""
    n = samples.shape[0]
    top = np.max(np.abs(samples), axis=0)
    ordinary = np.isfinite(top) & (top > 0)
    scale = np.ldexp(1.0, np.frexp(np.where(ordinary, top, 1.0))[1])
    scale = np.where(ordinary, scale, 1.0)
    z = samples / scale
    est = z.mean(axis=0) * scale
    err = z.std(axis=0, ddof=1) / np.sqrt(n) * scale
    return MonteCarloEstimate(np.asarray(est), np.asarray(err))


# Samples per chunk of entropy and kl_divergence: about this many elements (8
# MiB of float64), so that their memory grows with n_samples by one float64 per
# sample and batch entry, not by whole samples.
_CHUNK_ELEMENTS = 1 << 20


def _sample_chunks(e, n: int, rng):
    """``e.rsample((n,), rng=rng)`` in chunks of samples, as (index of the first
    sample, samples): the noise of that one call, so the same bits. Run it
    inside v.UndoDraws(rng)."""
    from .distributions import _check_batch_rank

    _check_batch_rank(1 + len(e.batch_shape), "the samples (n_samples,) + batch_shape")
    key, stream = v.key_and_stream(rng)
    per_sample = int(np.prod(e.batch_shape, dtype=np.int64)) * e.event_shape[0]
    m = max(1, _CHUNK_ELEMENTS // max(1, per_sample))
    threads = _threads.get_num_threads()
    for s0 in range(0, n, m):
        logits, temp = e._full((min(m, n - s0),))
        y = np.empty(logits.shape, dtype=e.dtype)
        e._draw(logits, temp, None, key, stream, s0 * per_sample, y, threads, False)
        yield s0, y


def entropy(d, n_samples=_DEFAULT_SAMPLES, rng=None) -> MonteCarloEstimate:
    n = _check_n(n_samples, d, d.batch_shape)
    e = _log_space(d)
    live = d._a > -np.inf
    h = np.empty((n,) + d.batch_shape, dtype=np.float64)
    # Everything after the first draw is inside UndoDraws: a call that fails
    # there (memory for the estimate, say) leaves a Generator as it was.
    with v.UndoDraws(rng):
        for s0, y in _sample_chunks(e, n, rng):
            log_q = e.log_prob(y).astype(np.float64)
            if _is_log(d):
                h[s0 : s0 + len(y)] = -log_q
            else:
                # log p_x(x) = log q(y) - sum_k y_k over the live categories.
                in_row = np.where(np.broadcast_to(live, y.shape), y, 0.0)
                h[s0 : s0 + len(y)] = in_row.sum(axis=-1, dtype=np.float64) - log_q
        return _estimate(h)


def _same_family(p, q, fn: str):
    from .distributions import RelaxedOneHotCategorical

    for name, dist in (("p", p), ("q", q)):
        if not isinstance(dist, RelaxedOneHotCategorical):
            raise TypeError(
                f"{fn}: {name} must be a RelaxedOneHotCategorical or "
                f"ExpRelaxedOneHotCategorical, got {type(dist).__name__}"
            )
    if fn == "kl_divergence" and type(p) is not type(q):
        raise TypeError(
            f"kl_divergence: p and q must be of the same class, got {type(p).__name__} "
            f"and {type(q).__name__}"
        )
    if p.event_shape != q.event_shape:
        raise ValueError(
            f"{fn}: p and q must have the same number of categories, got "
            f"{p.event_shape[0]} and {q.event_shape[0]}"
        )
    try:
        return np.broadcast_shapes(p.batch_shape, q.batch_shape)
    except ValueError:
        raise ValueError(
            f"{fn}: batch shapes {p.batch_shape} and {q.batch_shape} do not broadcast"
        ) from None


def kl_divergence(p, q, n_samples=_DEFAULT_SAMPLES, rng=None) -> MonteCarloEstimate:
    """KL(p || q) of two relaxed distributions, estimated by Monte Carlo.

    Parameters
    ----------
    p, q : RelaxedOneHotCategorical or ExpRelaxedOneHotCategorical
        Both of the same class, with the same number of categories and batch
        shapes that broadcast.
    n_samples : int
        Samples per batch entry, at least 2.
    rng : None, int or numpy.random.Generator
        As for :meth:`RelaxedOneHotCategorical.rsample`.

    Returns
    -------
    MonteCarloEstimate (estimate, stderr)
        Arrays of the broadcast batch shape, float64. The estimator is
        ``mean_i [log q_p(y_i) - log q_q(y_i)]`` over ``y_i = log x_i``, the
        log-space samples of ``p``, with ``log q`` the ExpRelaxed log-density:
        the change-of-variables terms of the simplex density are the same for p
        and q and cancel, so the estimate holds for both classes and never sees
        an underflowed sample. ``stderr`` is the sample standard deviation over
        sqrt(n). Where p and q mask different categories the supports differ
        (one is not absolutely continuous with respect to the other) and the
        estimate is ``+inf`` with stderr 0.

    Notes
    -----
    The estimate can be negative by chance; it is unbiased, not clipped.
    """
    batch = _same_family(p, q, "kl_divergence")
    n = _check_n(n_samples, p, batch)
    k = p.event_shape[0]
    ep, eq = _log_space(p, batch), _log_space(q, batch)
    log_ratio = np.empty((n,) + batch, dtype=np.float64)
    # As in entropy, everything after the first draw is inside UndoDraws.
    with v.UndoDraws(rng):
        for s0, y in _sample_chunks(ep, n, rng):
            lp = ep.log_prob(y).astype(np.float64)
            log_ratio[s0 : s0 + len(y)] = lp - eq.log_prob(y).astype(np.float64)
        mask_p = np.broadcast_to(p._a == -np.inf, batch + (k,))
        mask_q = np.broadcast_to(q._a == -np.inf, batch + (k,))
        differ = np.any(mask_p != mask_q, axis=-1)
        est = _estimate(np.where(differ, 0.0, log_ratio))
        if differ.any():
            est = MonteCarloEstimate(
                np.where(differ, np.inf, est.estimate),
                np.where(differ, 0.0, est.stderr),
            )
        return est


def categorical_kl(p, q) -> np.ndarray:
    """KL(Cat(p.probs) || Cat(q.probs)): the analytic KL of the underlying
    categorical distributions, *not* of the relaxed ones.

    ``sum_k p_k (log p_k - log q_k)`` with ``0 log 0 = 0``; ``+inf`` where q
    gives zero probability to a category p can take. Temperatures are ignored.
    Computed in float64 in the C++ core (clamped at 0 from below, against
    rounding); returned with the broadcast batch shape in the dtype of ``p``.
    Accepts either class for either argument.
    """
    batch = _same_family(p, q, "categorical_kl")
    a, _, _ = _rows(p, batch)
    b, _, _ = _rows(q, batch)
    out = np.empty(a.shape[0], dtype=np.float64)
    _core.categorical_kl(a, b, out, _threads.get_num_threads())
    return out.reshape(batch).astype(p.dtype, copy=False)


# ---------------------------------------------------------------- hard samples
def one_hot(soft: np.ndarray, threads: int | None = None) -> np.ndarray:
    """One-hot (0 / 1, in soft's dtype) of the first largest entry of each row,
    on ``threads`` threads (default: get_num_threads())."""
    k = soft.shape[-1]
    # float32 and float64 are read where they are; a float32 sample and its
    # one-hot need no float64 copies (the one-hot is exact in either).
    dtype = soft.dtype if soft.dtype in (np.float32, np.float64) else np.float64
    x = np.ascontiguousarray(soft, dtype=dtype).reshape(-1, k)
    out = np.empty(x.shape, dtype=dtype)
    _core.one_hot(x, out, _threads.resolve(threads))
    return out.reshape(soft.shape).astype(soft.dtype, copy=False)


def hard_sample(soft: np.ndarray, threads: int | None = None) -> HardSample:
    return HardSample(one_hot(soft, threads), soft)


# ------------------------------------------------------------ functional form
def gumbel_softmax(logits, temperature, hard=False, axis=-1, rng=None):
    """A Gumbel-softmax sample along ``axis``, like torch's ``F.gumbel_softmax``.

    Parameters
    ----------
    logits : array_like
        Unnormalised log-probabilities, finite or ``-inf`` (masked), categories
        along ``axis``. float32 stays float32; other kinds as in the classes.
    temperature : float or array_like
        Positive and finite. An array broadcasts with ``logits`` without the
        category axis (the distribution's batch shape, not NumPy broadcasting
        against the whole logits: for logits (3, 3), T of shape (3,) gives row
        ``i`` the temperature ``T[i]``), or has all of the logits' axes with
        length 1 at the category axis (``keepdims``), whichever axis that is.
        One with all of their axes and another length there is refused: a
        temperature cannot vary by category. :func:`gumbel_softmax_vjp` reads
        the same forms.
    hard : bool
        If True, return ``HardSample(hard, soft)``: the one-hot of the argmax of
        the soft sample (ties to the lowest index; masked categories are never
        chosen) and the soft sample itself. In the straight-through estimator the
        forward pass uses ``hard`` and the backward pass the soft sample's
        gradient, which :func:`gumbel_softmax_vjp` computes from ``soft``.
    axis : int
        The category axis.
    rng : None, int or numpy.random.Generator
        As for :meth:`RelaxedOneHotCategorical.rsample` (the stream is that of the
        logits moved to the last axis).

    Returns
    -------
    numpy.ndarray or HardSample
        The soft sample with the shape of ``logits`` (hard=False), or the pair.
    """
    from .distributions import RelaxedOneHotCategorical, _check_batch_rank

    hard = v.check_flag(hard, "hard")
    arr = v.as_float_array(logits, "logits")
    if arr.ndim == 0:
        raise ValueError("logits must have a category axis, got a 0-d array")
    _check_batch_rank(arr.ndim - 1, "logits")
    axis = _axis(axis, arr.ndim)
    if axis != arr.ndim - 1 and arr.size and not arr.max() < np.inf:
        # A NaN or +inf (max propagates NaN) is named by its index in the logits
        # as given, before the axis moves; good logits cost one reduction, and
        # a row (all -inf, or too wide) has the same batch index in both layouts.
        v.check_logit_entries(arr)
    moved = np.moveaxis(arr, axis, -1)
    # The distribution's messages describe the moved logits: the shapes that
    # depend on the axis are checked here first, in the caller's terms.
    if arr.shape[axis] == 0:
        raise ValueError(
            f"logits must have at least one category along axis {axis}, got shape "
            f"{arr.shape}"
        )
    t_shape = _temperature_shape(temperature)
    _check_full_rank_temperature(t_shape, arr.shape, axis)
    rows_t = _without_category_axis(temperature, arr.ndim, axis)
    given_shape = t_shape  # None for a masked or ragged one: the class names it
    if rows_t is not temperature:
        # Checked as given (in the logits' dtype, as the distribution will), so
        # that a message names its own shape and indices.
        given = v.as_float_array(
            temperature, "temperature", arr.dtype, check_range=False
        )
        v.check_temperature(given, temperature)
    if given_shape is not None:
        _check_batch_rank(len(np.shape(rows_t)), "temperature")  # broadcast_shapes
        try:
            np.broadcast_shapes(np.shape(rows_t), moved.shape[:-1])
        except ValueError:
            raise ValueError(
                f"temperature of shape {given_shape} does not broadcast with the "
                f"logits' shape without the category axis {axis}, "
                f"{moved.shape[:-1]}"
            ) from None
    d = RelaxedOneHotCategorical(rows_t, logits=moved)
    if d.batch_shape != moved.shape[:-1]:
        raise ValueError(
            f"temperature of shape {np.shape(temperature)} would enlarge the logits' "
            f"shape without the category axis, {moved.shape[:-1]}"
        )
    # The one-hot is formed inside UndoDraws too: a call that fails after
    # drawing (its allocation, say) leaves a Generator as it was.
    with v.UndoDraws(rng):
        soft = d.rsample(rng=rng)
        if not hard:
            return np.moveaxis(soft, -1, axis)
        return HardSample(
            np.moveaxis(one_hot(soft), -1, axis), np.moveaxis(soft, -1, axis)
        )


def _temperature_shape(temperature):
    """The shape of a temperature as given, or None for a masked or ragged one,
    which the distribution refuses with its own message."""
    if isinstance(temperature, np.ma.MaskedArray):
        return None
    try:
        return np.shape(temperature)
    except ValueError:
        return None


def _without_category_axis(temperature, ndim: int, axis: int):
    """A temperature with all ``ndim`` axes and length 1 at ``axis`` (keepdims)
    without that axis; any other as it is (the distribution checks it)."""
    shape = _temperature_shape(temperature)
    if shape is not None and len(shape) == ndim and shape[axis] == 1:
        return np.squeeze(np.asarray(temperature), axis)
    return temperature


def _check_full_rank_temperature(t_shape, shape, axis: int, what="logits"):
    """Refuses a temperature with every axis of ``shape`` (the logits or sample as
    given) but not length 1 at the category axis ``axis``. Such a temperature
    had also been read per row of the logits moved to the last axis when its
    last length was 1, which NumPy broadcasting (torch's ``gumbel_softmax``
    included) reads along the category axis instead (a fresh-user review:
    logits (4, 4) at axis 0 with T (4, 1) gave column b the temperature T[b],
    where torch scales category b by it)."""
    if t_shape is None or len(t_shape) != len(shape) or t_shape[axis] == 1:
        return
    rows = shape[:axis] + shape[axis + 1 :]
    keep = shape[:axis] + (1,) + shape[axis + 1 :]
    raise ValueError(
        f"temperature of shape {t_shape} has every axis of {what} {shape}, so it "
        f"needs length 1 at the category axis {axis} (keepdims), got "
        f"{t_shape[axis]}: a temperature cannot vary by category; for one per row "
        f"give shape {keep} or {rows}"
    )


def _axis(axis, ndim: int) -> int:
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis must be in [-{ndim}, {ndim}), got {axis}")
    return int(axis) % ndim


def gumbel_softmax_vjp(sample_soft, grad, temperature, axis=-1):
    """The gradient of ``sum(grad * sample)`` for ``sample = gumbel_softmax(...)``.

    Pass the *soft* sample (``HardSample.soft`` when hard=True): the
    straight-through gradient is the soft sample's. Formulas as in
    :meth:`RelaxedOneHotCategorical.rsample_vjp`; the logits are not needed.

    Returns
    -------
    RsampleGrad (logits, temperature)
        ``logits`` with the sample's shape, ``temperature`` with the shape of the
        temperature given (broadcast dimensions summed).
    """
    from .distributions import RsampleGrad, _check_batch_rank, _reduce_to, _round_to

    x = v.as_float_array(sample_soft, "sample_soft")
    if x.ndim == 0:
        raise ValueError("sample_soft must have a category axis, got a 0-d array")
    _check_batch_rank(x.ndim - 1, "sample_soft")
    axis = _axis(axis, x.ndim)
    x = np.moveaxis(x, axis, -1)
    v.check_simplex(
        x,
        np.zeros(x.shape[-1], dtype=x.dtype),
        "sample_soft",
        axis=None if axis == x.ndim - 1 else axis,
    )
    g0 = v.as_float_array(grad, "grad", x.dtype)
    given_shape = np.moveaxis(x, -1, axis).shape  # the sample's shape as given
    try:
        g = np.broadcast_to(
            np.moveaxis(np.broadcast_to(g0, given_shape), axis, -1), x.shape
        )  # its entries are checked by the kernel (below)
    except ValueError:
        raise ValueError(
            f"grad must broadcast to the sample's shape {given_shape}, "
            f"got {np.shape(grad)}"
        ) from None
    # The shape first, as gumbel_softmax checks it: a temperature with the
    # sample's axes is read per row only with length 1 at the category axis.
    _check_full_rank_temperature(
        _temperature_shape(temperature), given_shape, axis, "sample_soft"
    )
    t = v.as_float_array(temperature, "temperature", x.dtype, check_range=False)
    v.check_temperature(t, temperature)
    t_rows = _without_category_axis(t, x.ndim, axis)
    _check_batch_rank(t_rows.ndim, "temperature")
    try:
        rows = np.broadcast_shapes(t_rows.shape, x.shape[:-1])
    except ValueError:
        raise ValueError(
            f"temperature of shape {t.shape} does not broadcast with the sample's "
            f"rows {x.shape[:-1]}"
        ) from None
    if rows != x.shape[:-1]:
        raise ValueError(
            f"temperature of shape {t.shape} would enlarge the sample's rows "
            f"{x.shape[:-1]}"
        )
    temp = np.broadcast_to(t_rows, rows)
    threads = _threads.get_num_threads()
    gl = np.empty(x.shape, dtype=x.dtype)
    gt = np.empty(rows, dtype=np.float64)  # per row in float64, then summed
    bad = _core.rsample_vjp(0, x, g, temp, gl, gt, threads)
    if bad or g.size == 0:
        # Note [checking the upstream gradient] (kernels.hpp); the kernel reads
        # no entry of an empty call. This raises for a bad entry, naming the
        # first as the caller gave it.
        v.check_finite(g0, "grad")
    if bad:
        raise ValueError("grad must be finite, got a NaN or an infinity")
    gt = _round_to(_reduce_to(gt, t_rows.shape).reshape(t.shape), x.dtype)
    return RsampleGrad(np.moveaxis(gl, -1, axis), gt)
