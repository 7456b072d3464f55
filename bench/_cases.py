"""Benchmark inputs, float64 references and the agreement checks run before timing.

Every implementation is compared with the float64 reference below, evaluated on the
very inputs that implementation saw (upcast from the benchmark dtype), so an answer
that agrees with the reference agrees with every other one to twice the tolerance.

Tolerance (stated once, used for every comparison)
--------------------------------------------------
``|impl - ref| <= TOL_UNITS * eps(dtype) * sqrt(n) * scale``, element by element, where

* ``eps`` is the machine epsilon of the benchmark dtype (1.19e-7 for float32, 2.22e-16
  for float64),
* ``n`` is the number of terms summed into that output (K for per-row quantities,
  rows*K for the gradient of the scalar temperature): round-off of a sum of random-sign
  terms grows like sqrt(n) unless the library sums pairwise,
* ``scale`` is a first-order condition number of the formula: the sum of the absolute
  values of its terms, where every exp(z) also carries the size of its argument
  (an exp whose argument is rounded by eps*|z| is off by that much relative).

A formula bug (wrong sign, wrong convention for normalised logits, a dropped term)
moves the answer by a fraction of ``scale`` of order one, far above the tolerance in
float64; in float32 the temperature gradient of a large batch is a sum of millions of
cancelling terms, so there the float64 run is the one that catches formula bugs and the
float32 run bounds the round-off.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

# K = 2 and 3 use 3-4 M elements (far beyond any cache) to keep the default run short.
DEFAULT_SHAPES = [(1 << 20, 8), (4096, 256), (32, 128000), (1 << 21, 2), (1 << 20, 3)]
# Both at most CHECK_ROWS rows, so checks and timing share one JAX compilation.
QUICK_SHAPES = [(2048, 256), (1 << 14, 3)]
OPS = ("rsample", "log_prob", "rsample_vjp", "log_prob_vjp", "fwd_bwd", "lp_fwd_bwd")

# Usual Gumbel-softmax training range; low enough that exp((a + g) / T) spans ~20
# decades at K = 128000, which exercises the stable softmax without underflow.
TEMPERATURE = 0.5

# Agreement checks run on at most this many leading rows of each shape: the per-element
# error does not depend on the row count, and the full-size float64 references would
# take a large share of the run.  The samplers' sanity checks use the full timed output.
CHECK_ROWS = 1 << 14

# In the first full run every library and output stayed under 6.1 units except
# relaxcat's float64 row sums at K = 128000 (14.2 units, a plain running sum); 16 is
# the bound, and a formula bug is 10**9 units and more in float64.
TOL_UNITS = 16.0

# Two-sided normal tail beyond 6 sigma is 2e-9: the chance that a correct sampler fails
# one of the few argmax tests of a run is negligible.
SANITY_Z = 6.0


@dataclasses.dataclass
class Case:
    """One benchmark input set; all arrays C-contiguous in ``dtype``."""

    rows: int
    k: int
    dtype: np.dtype
    temperature: float
    logits: np.ndarray  # (rows, k), unnormalised
    gumbels: np.ndarray  # (rows, k), shared noise for checking the samplers
    x: np.ndarray  # (rows, k), softmax((logits + gumbels) / T) rounded to dtype
    w: np.ndarray  # (rows, k), upstream gradient of a sample
    gl: np.ndarray  # (rows,), upstream gradient of log_prob

    @property
    def elements(self) -> int:
        return self.rows * self.k

    def head(self, rows: int) -> Case:
        """The same case cut to its first ``rows`` rows (copies, still contiguous)."""
        if rows >= self.rows:
            return self
        cut = {
            f.name: np.ascontiguousarray(getattr(self, f.name)[:rows])
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), np.ndarray)
        }
        return dataclasses.replace(self, rows=rows, **cut)


def make_case(rows: int, k: int, dtype, seed: int = 0) -> Case:
    """Draw reproducible inputs; one seed gives the same case in every worker."""
    dtype = np.dtype(dtype)
    rng = np.random.default_rng([seed, rows, k, dtype.itemsize])
    logits = rng.standard_normal((rows, k), dtype=np.float64)

    # Float64 uniforms never round to 0 or 1 at these sizes, so the noise is finite.
    u = rng.random((rows, k))
    gumbels = -np.log(-np.log(u))
    x = ref_sample(logits, gumbels, TEMPERATURE)

    w = rng.standard_normal((rows, k))
    gl = rng.standard_normal(rows)
    return Case(
        rows=rows,
        k=k,
        dtype=dtype,
        temperature=TEMPERATURE,
        logits=logits.astype(dtype),
        gumbels=gumbels.astype(dtype),
        x=x.astype(dtype),
        w=w.astype(dtype),
        gl=gl.astype(dtype),
    )


# Float64 references.  Written plainly (no in-place tricks) so that they share no code
# with the tuned NumPy competitor in _impls.py.


def _f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _logsumexp(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=-1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))[..., 0]


def ref_sample(a, g, t) -> np.ndarray:
    z = (_f64(a) + _f64(g)) / t
    return np.exp(z - _logsumexp(z)[..., None])


def ref_log_prob(a, t, x) -> np.ndarray:
    a, x = _f64(a), _f64(x)
    k = a.shape[-1]
    y = np.log(x)
    lse = _logsumexp(a - t * y)
    return (
        math.lgamma(k)
        + (k - 1) * math.log(t)
        + (a - (t + 1) * y).sum(axis=-1)
        - k * lse
    )


def ref_rsample_vjp(x, w, t):
    x, w = _f64(x), _f64(w)
    xw = (x * w).sum(axis=-1, keepdims=True)
    dx = x * (w - xw)
    return dx / t, -(dx * np.log(x)).sum() / t


def ref_log_prob_vjp(a, t, x, gl):
    a, x, gl = _f64(a), _f64(x), _f64(gl)
    k = a.shape[-1]
    y = np.log(x)
    z = a - t * y
    s = np.exp(z - _logsumexp(z)[..., None])
    g_x = gl[..., None] * (-(t + 1) + k * t * s) / x
    g_a = gl[..., None] * (1 - k * s)
    g_t = (gl * ((k - 1) / t - y.sum(-1) + k * (s * y).sum(-1))).sum()
    return g_x, g_a, g_t


# Condition scales for the tolerance in the module docstring.  Each mirrors one
# reference formula with every term replaced by its absolute value.


def _probs(a) -> np.ndarray:
    a = _f64(a)
    return np.exp(a - _logsumexp(a)[..., None])


def _add_projection(scale_a: np.ndarray, a) -> np.ndarray:
    # Libraries that normalise the logits first (torch) send the logits gradient through
    # g - softmax(a) * sum(g).  The exact sum is zero; its rounding error, of the order
    # of eps * sum|g|, lands on every category in proportion to its probability, which
    # can dwarf a category whose sample coordinate is tiny.
    return scale_a + _probs(a) * scale_a.sum(axis=-1, keepdims=True)


def scale_sample(a, g, t) -> np.ndarray:
    z = (_f64(a) + _f64(g)) / t
    lse = _logsumexp(z)[..., None]
    lse_a = _logsumexp(_f64(a))[..., None]
    return np.exp(z - lse) * (1 + np.abs(z) + np.abs(lse) + np.abs(lse_a) / t)


def scale_log_prob(a, t, x) -> np.ndarray:
    a, x = _f64(a), _f64(x)
    k = a.shape[-1]
    y = np.log(x)
    z = a - t * y
    lse_z, lse_a = _logsumexp(z), _logsumexp(a)

    # Libraries that normalise the logits first (torch) add and remove K*lse(a).
    terms = np.abs(a) + (t + 1) * np.abs(y) + np.abs(z)
    return (
        math.lgamma(k)
        + (k - 1) * abs(math.log(t))
        + terms.sum(axis=-1)
        + k * (np.abs(lse_z) + np.abs(lse_a))
    )


def scale_rsample_vjp(x, w, t, a):
    x, w = _f64(x), _f64(w)
    xw = np.abs(x * w).sum(axis=-1, keepdims=True)
    dx = x * (np.abs(w) + xw)
    return _add_projection(dx / t, a), (dx * np.abs(np.log(x))).sum() / t


def scale_log_prob_vjp(a, t, x, gl):
    a, x, gl = _f64(a), _f64(x), np.abs(_f64(gl))
    k = a.shape[-1]
    y = np.log(x)
    z = a - t * y
    lse = _logsumexp(z)[..., None]
    s = np.exp(z - lse) * (1 + np.abs(z) + np.abs(lse))
    g_x = gl[..., None] * ((t + 1) + k * t * s) / x
    g_a = _add_projection(gl[..., None] * (1 + k * s), a)
    g_t = (gl * ((k - 1) / t + np.abs(y).sum(-1) + k * (s * np.abs(y)).sum(-1))).sum()
    return g_x, g_a, g_t


def agreement(out, ref, scale, n: int, dtype) -> float:
    """Worst error of ``out`` in tolerance units (module docstring); NaN/inf gives inf.

    The check passes when the result is at most ``TOL_UNITS``.
    """
    out, ref, scale = _f64(out), _f64(ref), _f64(scale)
    if out.shape != ref.shape:
        raise ValueError(f"shape {out.shape} differs from the reference {ref.shape}")
    if not np.all(np.isfinite(out)):
        return math.inf
    unit = np.finfo(dtype).eps * math.sqrt(n) * scale

    # A zero scale can only come with a zero reference; tiny keeps 0/0 out.
    err = np.abs(out - ref) / np.maximum(unit, np.finfo(np.float64).tiny)
    return float(err.max()) if err.size else 0.0


def sampler_sanity(x, logits, dtype) -> dict:
    """Normalisation and Gumbel-max statistics of a sampler's output.

    A relaxed sample keeps the argmax of ``logits + G``, which is exactly
    Categorical(softmax(logits)) distributed.  Two z-scores test that:

    * ``z_logp``: the summed log-probability of each row's argmax category against its
      mean (minus the summed entropies) and its variance; valid for any K;
    * ``z_count``: per category, the number of rows whose argmax it is against the sum
      of that category's probabilities; only categories expecting >= 100 rows, so
      that the normal approximation holds.

    Returns the worst normalisation error in tolerance units (n = K, scale = 1) and the
    largest |z| of each test; ``ok`` says whether all are within bounds.
    """
    x = np.asarray(x)
    rows, k = x.shape
    finite_nonneg = bool(np.all(np.isfinite(x)) and np.all(x >= 0))
    sums = x.sum(axis=-1, dtype=np.float64)
    norm_units = agreement(sums, np.ones_like(sums), np.ones_like(sums), k, dtype)

    a = _f64(logits)
    logp = a - _logsumexp(a)[..., None]
    p = np.exp(logp)
    pick = x.argmax(axis=-1)
    picked = np.take_along_axis(logp, pick[:, None], axis=-1)[:, 0]
    mean = (p * logp).sum(axis=-1)
    var = (p * logp**2).sum(axis=-1) - mean**2
    z_logp = (picked.sum() - mean.sum()) / math.sqrt(max(var.sum(), 1e-300))

    expected = p.sum(axis=0)
    var_count = (p * (1 - p)).sum(axis=0)
    counts = np.bincount(pick, minlength=k)
    tested = expected >= 100
    z_count = 0.0
    if tested.any():
        z = (counts[tested] - expected[tested]) / np.sqrt(var_count[tested])
        z_count = float(np.abs(z).max())

    ok = (
        finite_nonneg
        and norm_units <= TOL_UNITS
        and abs(z_logp) <= SANITY_Z
        and z_count <= SANITY_Z
    )
    return {
        "ok": bool(ok),
        "finite_nonnegative": finite_nonneg,
        "normalisation_units": norm_units,
        "z_logp": float(z_logp),
        "z_count": z_count,
        "categories_counted": int(tested.sum()),
    }
