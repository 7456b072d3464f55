"""The implementations that bench/compare.py times, behind one small interface.

Each class turns a :class:`_cases.Case` into callables.  ``timed(op)`` returns a
zero-argument function whose every call does the whole operation and waits for the
result (JAX dispatches asynchronously, so its callables block).  ``check_sample`` and
``check_rsample_vjp`` answer on the case's shared Gumbel noise, for the agreement
checks;
every other check uses the timed callable's own answer.

What a timed call includes (the same rule for every library):

* ``rsample`` and ``log_prob`` build the distribution inside the call, because in
  training the logits change every step and construction (normalising the logits,
  validating arguments) is a real per-step cost;
* ``rsample_vjp`` and ``log_prob_vjp`` time the backward pass alone: relaxcat's
  distribution, torch's autograd graph and JAX's residuals are built before timing;
* ``fwd_bwd`` times construction, a fresh sample and its VJP;
* ``lp_fwd_bwd`` times construction, ``log_prob`` and its VJP for an upstream
  gradient known in advance (a sum or mean of log-densities): each library's own
  way of getting both, which for relaxcat is the one-pass ``log_prob_and_vjp``.

Results are returned as the library's own arrays; :func:`to_numpy` converts them.
"""

from __future__ import annotations

import math

import numpy as np

# Below this many categories a loop over columns (one vectorised op per column) beats
# NumPy's reduction along a short contiguous last axis by 5-20x; above it the reduction
# wins.  Measured on this machine for K = 2..256.
_COLUMN_LOOP_MAX_K = 16
_COLUMN_SUM_MAX_K = 4


# Every operation; F.gumbel_softmax has rsample only.
ALL_OPS = (
    "rsample",
    "log_prob",
    "rsample_vjp",
    "log_prob_vjp",
    "fwd_bwd",
    "lp_fwd_bwd",
)


def to_numpy(result):
    """Convert a library result (array, tensor, tuple of them) to NumPy arrays."""
    if isinstance(result, (tuple, list)):
        return tuple(to_numpy(r) for r in result)
    if hasattr(result, "detach"):
        return result.detach().numpy()
    return np.asarray(result)


# Tuned NumPy.  Every array stays in the input dtype (no float64 detours), temporaries
# are reused in place, and short rows are reduced column by column.


def _row_max(z: np.ndarray) -> np.ndarray:
    if z.shape[-1] <= _COLUMN_LOOP_MAX_K:
        m = z[:, 0].copy()
        for j in range(1, z.shape[-1]):
            np.maximum(m, z[:, j], out=m)
        return m[:, None]
    return z.max(axis=-1, keepdims=True)


def _row_sum(z: np.ndarray) -> np.ndarray:
    if z.shape[-1] <= _COLUMN_SUM_MAX_K:
        s = z[:, 0].copy()
        for j in range(1, z.shape[-1]):
            s += z[:, j]
        return s
    return np.einsum("ij->i", z)


def _softmax_rows_inplace(z: np.ndarray) -> np.ndarray:
    # Subtracting the row maximum keeps exp from overflowing; the largest term becomes
    # 1, so the row sum is at least 1 and its reciprocal is safe.
    z -= _row_max(z)
    np.exp(z, out=z)
    z *= (1 / _row_sum(z))[:, None]
    return z


def _logsumexp_rows_consuming(z: np.ndarray) -> np.ndarray:
    """Row-wise logsumexp of ``z``, which is overwritten."""
    m = _row_max(z)
    z -= m
    np.exp(z, out=z)
    return np.log(_row_sum(z)) + m[:, 0]


def numpy_rsample(a: np.ndarray, t: float, rng: np.random.Generator) -> np.ndarray:
    dtype = a.dtype
    u = rng.random(a.shape, dtype=dtype)

    # A float32 uniform is exactly 0 with probability 2**-24, about once per 2**24
    # draws; lifting it to the smallest normal keeps the Gumbel noise finite.
    np.maximum(u, np.finfo(dtype).tiny, out=u)
    np.log(u, out=u)
    np.negative(u, out=u)
    np.log(u, out=u)  # u = log(-log U) = -G

    np.subtract(a, u, out=u)
    u *= dtype.type(1 / t)
    return _softmax_rows_inplace(u)


def numpy_softmax_given(a: np.ndarray, g: np.ndarray, t: float) -> np.ndarray:
    z = a + g
    z *= a.dtype.type(1 / t)
    return _softmax_rows_inplace(z)


def numpy_log_prob(a: np.ndarray, t: float, x: np.ndarray) -> np.ndarray:
    k = a.shape[-1]
    tt = a.dtype.type(t)
    y = np.log(x)
    sum_y = _row_sum(y)

    # The density is invariant to shifting a row of logits, so they need no
    # normalisation; y is consumed as the scratch for a - T*y.
    y *= -tt
    y += a
    lse = _logsumexp_rows_consuming(y)
    head = math.lgamma(k) + (k - 1) * np.log(tt)
    return head + _row_sum(a) - (tt + 1) * sum_y - k * lse


def numpy_rsample_vjp(x: np.ndarray, w: np.ndarray, t: float):
    tt = x.dtype.type(t)
    d = w - np.einsum("ij,ij->i", x, w)[:, None]
    d *= x  # x * (w - <w, x>)

    y = np.log(x)
    y *= d
    g_t = -y.sum() / tt
    d *= 1 / tt
    return d, g_t


def numpy_log_prob_vjp(a: np.ndarray, t: float, x: np.ndarray, gl: np.ndarray):
    k = a.shape[-1]
    tt = a.dtype.type(t)
    y = np.log(x)
    s = np.multiply(y, -tt)
    s += a
    _softmax_rows_inplace(s)
    return _log_prob_grads(s, y, x, gl, k, tt, _row_sum(y))


def numpy_log_prob_and_vjp(a: np.ndarray, t: float, x: np.ndarray, gl: np.ndarray):
    """log_prob and its VJP sharing log x, the softmax and its normaliser."""
    k = a.shape[-1]
    tt = a.dtype.type(t)
    y = np.log(x)
    sum_y = _row_sum(y)
    s = np.multiply(y, -tt)
    s += a
    m = _row_max(s)
    s -= m
    np.exp(s, out=s)
    total = _row_sum(s)
    s *= (1 / total)[:, None]
    lse = np.log(total) + m[:, 0]
    head = math.lgamma(k) + (k - 1) * np.log(tt)
    lp = head + _row_sum(a) - (tt + 1) * sum_y - k * lse
    return (lp, *_log_prob_grads(s, y, x, gl, k, tt, sum_y))


def _log_prob_grads(s, y, x, gl, k, tt, sum_y):
    """The log_prob VJP from the softmax s of a - T y and y = log x (both consumed)."""
    row = (k - 1) / tt - sum_y + k * np.einsum("ij,ij->i", s, y)
    g_t = np.einsum("i,i->", gl, row)  # not np.dot: BLAS could add threads

    # y is free now: it becomes d/dx = gl * (K T s - (T + 1)) / x, then s becomes
    # d/dlogits = gl * (1 - K s).
    np.multiply(s, k * tt, out=y)
    y -= tt + 1
    y /= x
    y *= gl[:, None]
    s *= -k
    s += 1
    s *= gl[:, None]
    return y, s, g_t


class NumpyImpl:
    name = "numpy"
    label = "NumPy"
    ops = ALL_OPS

    def __init__(self, threads: int):
        # Elementwise ufuncs and these reductions run on one thread whatever the BLAS.
        self.rng = np.random.default_rng(1)

    def setup(self, case):
        self.c = case

    def timed(self, op):
        c, t, rng = self.c, self.c.temperature, self.rng
        if op == "rsample":
            return lambda: numpy_rsample(c.logits, t, rng)
        if op == "log_prob":
            return lambda: numpy_log_prob(c.logits, t, c.x)
        if op == "rsample_vjp":
            return lambda: numpy_rsample_vjp(c.x, c.w, t)
        if op == "log_prob_vjp":
            return lambda: numpy_log_prob_vjp(c.logits, t, c.x, c.gl)
        if op == "lp_fwd_bwd":
            return lambda: numpy_log_prob_and_vjp(c.logits, t, c.x, c.gl)

        def fwd_bwd():
            x = numpy_rsample(c.logits, t, rng)
            return (x, *numpy_rsample_vjp(x, c.w, t))

        return fwd_bwd

    def check_sample(self):
        return numpy_softmax_given(self.c.logits, self.c.gumbels, self.c.temperature)

    def check_rsample_vjp(self):
        return (self.c.x, *numpy_rsample_vjp(self.c.x, self.c.w, self.c.temperature))


class TorchDistImpl:
    """torch.distributions.RelaxedOneHotCategorical, with torch's default validation
    (``validate=None``) or with ``validate_args=False``."""

    ops = ALL_OPS

    def __init__(self, threads: int, validate):
        import torch

        torch.set_num_threads(threads)
        self.torch = torch
        self.validate = validate
        self.name = "torch" if validate is None else "torch_nv"
        self.label = "torch" if validate is None else "torch (no validation)"

    def setup(self, case):
        torch = self.torch
        self.c = case
        self.a = torch.from_numpy(case.logits)
        self.t = torch.tensor(case.temperature, dtype=self.a.dtype)
        self.x = torch.from_numpy(case.x)
        self.w = torch.from_numpy(case.w)
        self.gl = torch.from_numpy(case.gl)
        self.g = torch.from_numpy(case.gumbels)

    def _dist(self, a, t):
        d = self.torch.distributions.RelaxedOneHotCategorical
        return d(t, logits=a, validate_args=self.validate)

    def _leaves(self, *tensors):
        return [v.detach().clone().requires_grad_() for v in tensors]

    def timed(self, op):
        grad = self.torch.autograd.grad
        if op == "rsample":
            return lambda: self._dist(self.a, self.t).rsample()
        if op == "log_prob":
            return lambda: self._dist(self.a, self.t).log_prob(self.x)
        if op == "rsample_vjp":
            a, t = self._leaves(self.a, self.t)
            xs = self._dist(a, t).rsample()
            return lambda: grad(xs, (a, t), self.w, retain_graph=True)
        if op == "log_prob_vjp":
            x, a, t = self._leaves(self.x, self.a, self.t)
            lp = self._dist(a, t).log_prob(x)
            return lambda: grad(lp, (x, a, t), self.gl, retain_graph=True)
        if op == "lp_fwd_bwd":
            x, a, t = self._leaves(self.x, self.a, self.t)

            def lp_fwd_bwd():
                lp = self._dist(a, t).log_prob(x)
                return (lp.detach(), *grad(lp, (x, a, t), self.gl))

            return lp_fwd_bwd

        a, t = self._leaves(self.a, self.t)

        def fwd_bwd():
            xs = self._dist(a, t).rsample()
            return (xs.detach(), *grad(xs, (a, t), self.w))

        return fwd_bwd

    def check_sample(self):
        # rsample draws its own noise; the shared noise goes through the same formula.
        return self.torch.softmax((self.a + self.g) / self.t, dim=-1)

    def check_rsample_vjp(self):
        a, t = self._leaves(self.a, self.t)
        xs = self.torch.softmax((a + self.g) / t, dim=-1)
        return (xs.detach(), *self.torch.autograd.grad(xs, (a, t), self.w))


class TorchGumbelSoftmaxImpl:
    """torch.nn.functional.gumbel_softmax: sampling only (its tau is a float, so it has
    no temperature gradient, and it has no density)."""

    name = "torch_gs"
    label = "F.gumbel_softmax"
    ops = ("rsample",)

    def __init__(self, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.torch = torch

    def setup(self, case):
        self.c = case
        self.a = self.torch.from_numpy(case.logits)

    def timed(self, op):
        f = self.torch.nn.functional.gumbel_softmax
        t = self.c.temperature
        return lambda: f(self.a, tau=t, dim=-1)

    check_sample = None  # draws its own noise; only the sanity checks apply
    check_rsample_vjp = None


class JaxImpl:
    name = "jax"
    label = "JAX (jit)"
    ops = ALL_OPS

    def __init__(self, threads: int):
        # The thread count comes from the CPU affinity set before this import.
        import jax
        import jax.numpy as jnp

        jax.config.update("jax_enable_x64", True)
        self.jax, self.jnp = jax, jnp

        def sample_given(a, g, t):
            return jax.nn.softmax((a + g) / t, axis=-1)

        def sample(key, a, t):
            return sample_given(a, jax.random.gumbel(key, a.shape, a.dtype), t)

        def log_prob(x, a, t):
            k = a.shape[-1]
            y = jnp.log(x)
            lse = jax.nn.logsumexp(a - t * y, axis=-1)
            body = jnp.sum(a - (t + 1) * y, axis=-1) - k * lse
            return math.lgamma(k) + (k - 1) * jnp.log(t) + body

        def fwd_bwd(key, a, t, w):
            xs, pullback = jax.vjp(lambda a, t: sample(key, a, t), a, t)
            return (xs, *pullback(w))

        self._sample_given = jax.jit(sample_given)
        self._sample = jax.jit(sample)
        self._log_prob = jax.jit(log_prob)
        self._fwd_bwd = jax.jit(fwd_bwd)

        def lp_fwd_bwd(x, a, t, gl):
            lp, pullback = jax.vjp(log_prob, x, a, t)
            return (lp, *pullback(gl))

        self._lp_fwd_bwd = jax.jit(lp_fwd_bwd)

        # A pullback is a pytree of residuals, so jit compiles the backward pass alone.
        self._pull = jax.jit(lambda pullback, ct: pullback(ct))

    def setup(self, case):
        jnp = self.jnp
        self.c = case
        put = self.jax.device_put
        self.a, self.x = put(case.logits), put(case.x)
        self.w, self.gl, self.g = put(case.w), put(case.gl), put(case.gumbels)
        self.t = jnp.asarray(case.temperature, dtype=case.dtype)

        # One fixed key: the same bits every call, as with any counter-based generator.
        self.key = self.jax.random.key(3)
        self.jax.block_until_ready((self.a, self.x, self.w, self.gl, self.g))

    def timed(self, op):
        ready = self.jax.block_until_ready
        if op == "rsample":
            return lambda: ready(self._sample(self.key, self.a, self.t))
        if op == "log_prob":
            return lambda: ready(self._log_prob(self.x, self.a, self.t))
        if op == "rsample_vjp":
            _, pullback = self.jax.vjp(
                lambda a, t: self._sample(self.key, a, t), self.a, self.t
            )
            return lambda: ready(self._pull(pullback, self.w))
        if op == "log_prob_vjp":
            _, pullback = self.jax.vjp(self._log_prob, self.x, self.a, self.t)
            return lambda: ready(self._pull(pullback, self.gl))
        if op == "lp_fwd_bwd":
            return lambda: ready(self._lp_fwd_bwd(self.x, self.a, self.t, self.gl))
        return lambda: ready(self._fwd_bwd(self.key, self.a, self.t, self.w))

    def check_sample(self):
        return self._sample_given(self.a, self.g, self.t)

    def check_rsample_vjp(self):
        xs, pullback = self.jax.vjp(
            lambda a, t: self._sample_given(a, self.g, t), self.a, self.t
        )
        return (xs, *self._pull(pullback, self.w))


class RelaxcatImpl:
    ops = ALL_OPS

    def __init__(self, threads: int, validate):
        import relaxcat

        # The package may be half-built (importable, classes missing): treat as absent.
        if not hasattr(relaxcat, "RelaxedOneHotCategorical"):
            raise ImportError("relaxcat has no RelaxedOneHotCategorical yet")
        if hasattr(relaxcat, "set_num_threads"):
            relaxcat.set_num_threads(threads)
        self.rc = relaxcat
        self.validate = validate
        self.name = "relaxcat" if validate is None else "relaxcat_nv"
        self.label = "relaxcat" if validate is None else "relaxcat (no validation)"
        self.rng = np.random.default_rng(2)

    def setup(self, case):
        self.c = case

    def _dist(self):
        c = self.c
        kwargs = {} if self.validate is None else {"validate_args": self.validate}
        dist = self.rc.RelaxedOneHotCategorical
        return dist(c.temperature, logits=c.logits, **kwargs)

    def timed(self, op):
        c, rng = self.c, self.rng
        if op == "rsample":
            return lambda: self._dist().rsample(rng=rng)
        if op == "log_prob":
            return lambda: self._dist().log_prob(c.x)
        if op == "rsample_vjp":
            d = self._dist()
            return lambda: tuple(d.rsample_vjp(c.x, c.w))
        if op == "log_prob_vjp":
            d = self._dist()
            return lambda: tuple(d.log_prob_vjp(c.x, c.gl))
        if op == "lp_fwd_bwd":

            def lp_fwd_bwd():
                lp, grads = self._dist().log_prob_and_vjp(c.x, c.gl)
                return (lp, *grads)

            return lp_fwd_bwd

        def fwd_bwd():
            d = self._dist()
            xs = d.rsample(rng=rng)
            return (xs, *d.rsample_vjp(xs, c.w))

        return fwd_bwd

    def check_sample(self):
        return self._dist().rsample(gumbels=self.c.gumbels)

    def check_rsample_vjp(self):
        return (self.c.x, *self._dist().rsample_vjp(self.c.x, self.c.w))


# Display order: relaxcat first, then the competitors.
IMPL_NAMES = (
    "relaxcat",
    "relaxcat_nv",
    "torch",
    "torch_nv",
    "torch_gs",
    "jax",
    "numpy",
)
RELAXCAT_NAMES = ("relaxcat", "relaxcat_nv")
LABELS = {
    "relaxcat": "relaxcat",
    "relaxcat_nv": "relaxcat (no validation)",
    "torch": "torch",
    "torch_nv": "torch (no validation)",
    "torch_gs": "F.gumbel_softmax",
    "jax": "JAX (jit)",
    "numpy": "NumPy",
}


def load(names, threads: int):
    """Instantiate the named implementations; a missing library is skipped, not fatal.

    Returns ``(impls, skipped)`` with ``skipped`` mapping a name to the reason.
    """
    factories = {
        "relaxcat": lambda: RelaxcatImpl(threads, None),
        "relaxcat_nv": lambda: RelaxcatImpl(threads, False),
        "torch": lambda: TorchDistImpl(threads, None),
        "torch_nv": lambda: TorchDistImpl(threads, False),
        "torch_gs": lambda: TorchGumbelSoftmaxImpl(threads),
        "jax": lambda: JaxImpl(threads),
        "numpy": lambda: NumpyImpl(threads),
    }
    impls, skipped = [], {}
    for name in names:
        try:
            impls.append(factories[name]())
        except ImportError as exc:
            skipped[name] = f"not importable: {exc}"
    return impls, skipped
