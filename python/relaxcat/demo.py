"""A categorical variational autoencoder on scikit-learn's digits, in plain NumPy.

This is the library's "main job" end to end: relaxcat draws the relaxed one-hot
latent codes, evaluates their densities and returns every gradient that flows
through them, while the networks around it are a few lines of NumPy.

Model
-----
* Data: the 1,797 real 8x8 images of ``sklearn.datasets.load_digits`` (shipped
  with scikit-learn, no download), pixels scaled from 0..16 to [0, 1]. A fixed
  split (seed ``SPLIT_SEED``, independent of ``--seed``) holds out
  ``N_HELD_OUT`` images.
* Encoder: 64 -> 256 (tanh) -> 8 x 10 logits. Latent: 8 categorical variables
  of 10 categories, relaxed with ``relaxcat.ExpRelaxedOneHotCategorical``;
  the decoder reads ``x = exp(y)``, a point of the simplex.
* Decoder: 80 -> 256 (tanh) -> 64 Bernoulli logits. With grey-level targets
  in [0, 1] the Bernoulli term is a cross-entropy rather than a normalised
  log-likelihood, so the ELBO figures compare runs and implementations with
  each other; they are not a bound on the log-likelihood of the images.
* Everything is float64: the networks are small enough that double precision
  costs little, and the finite-difference test then checks the very code the
  demo runs.

KL term
-------
Two estimators, chosen with ``kl`` (``--kl`` on the command line):

``"analytic"`` (the default)
    The KL of the categorical posterior to the uniform categorical prior,
    ``sum_k q_k log q_k + log K`` per latent, as in Jang et al. (2017). The
    reconstruction term is relaxed, the KL is not.
``"relaxed"``
    A one-sample Monte Carlo estimate, ``log q(y) - log p(y)``, where ``q`` is
    the relaxed posterior from the encoder and ``p`` the relaxed uniform prior
    (all logits zero), both at the current temperature and both scored by
    relaxcat's ``log_prob``, as in Maddison et al. (2017). Its gradient is
    pathwise: the ``value`` part of ``log_prob_vjp`` is chained through
    ``rsample_vjp`` together with the decoder's gradient, and the direct
    ``logits`` and ``temperature`` parts are added. Every gradient of this
    objective passes through relaxcat, which is why the tests train with it.

The default is the analytic KL because the relaxed one, measured on this data,
drives the posterior to the prior: the relaxed KL of a confident posterior keeps
growing with the gap between its logits (about 4 nats per latent at a gap of 5,
7 at a gap of 8, where the categorical KL stops at ``log 10 = 2.3``), and on
grey-level digits the decoder gains at most about 10 nats from the codes, so
the optimum is a near-uniform posterior and the figure shows only mean images.
With a shared temperature the relaxed KL does not depend on ``T`` at all (``T``
rescales ``y`` by a bijection that is the same for ``q`` and ``p``), so its
temperature gradient is zero in expectation and only noise in a single draw.

Note [KL in log space]: the densities are those of the log-space sample
``y = log x`` (``ExpRelaxedOneHotCategorical``), not of ``x``. The KL estimate
is the same either way, because a density ratio does not change under a change
of variables, but the numbers are better behaved. The density of ``x`` carries
a Jacobian term ``-sum_k log x_k`` that is the same for ``q`` and ``p`` and so
cancels in the difference; it is tens to hundreds in size at low temperature,
so computing it twice and subtracting would only lose digits. And ``log x_k``
of a coordinate that underflowed to zero is ``-inf``, which makes the density of
``x`` infinite, whereas ``y`` comes out of the sampler already in log space and
stays finite.

Temperature
-----------
Annealed from ``1.0`` to ``0.5`` on an exponential schedule over the run, or,
with ``learn_temperature``, a learned parameter ``log T`` that starts at
``log 1.0``, is updated by Adam with relaxcat's temperature gradient and is
clipped to ``[TEMPERATURE_MIN, TEMPERATURE_MAX] = [0.1, 1.0]``. Expect it to sit
at the upper end: the relaxed ELBO prefers blurrier codes, which pass the decoder
more than the categorical KL charges for, so a learned temperature is an honest
demonstration of the gradient rather than a better model.

Run it with ``python -m relaxcat demo``; see :func:`main`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Callable

import numpy as np

import relaxcat

N_LATENT = 8
N_CATEGORIES = 10
N_PIXELS = 64
HIDDEN = 256

# 297 of 1,797 images leave 1,500 for training: 15 even batches of 100.
N_HELD_OUT = 297
SPLIT_SEED = 0

# The learned temperature is kept where the relaxed codes still look one-hot (T at
# most the schedule's start) and gradients neither vanish nor explode (T >= 0.1).
# The upper end binds: the relaxed ELBO rewards blurrier codes, and a free T
# climbed to 4 to 5 within 300 epochs while the discrete ELBO fell from -24 to
# -38 (relaxed KL) or -68 (analytic KL).
TEMPERATURE_MIN = 0.1
TEMPERATURE_MAX = 1.0

ENCODER = ("enc_w1", "enc_b1", "enc_w2", "enc_b2")
DECODER = ("dec_w1", "dec_b1", "dec_w2", "dec_b2")

KL_ESTIMATORS = ("analytic", "relaxed")

# Faults that the tests inject to show that their margins catch a wrong gradient.
FAULTS = (
    "flip-logits-gradient",
    "zero-temperature-gradient",
    "flip-temperature-gradient",
)

Params = dict[str, np.ndarray]

KL_DESCRIPTIONS = {
    "analytic": "analytic categorical KL to the uniform prior (relaxed codes "
    "feed the decoder only)",
    "relaxed": "Monte Carlo log q(y) - log p(y), ExpRelaxed (log-space) densities, "
    "relaxed uniform prior",
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Hyperparameters of one run; the defaults are the demo's.

    Parameters
    ----------
    epochs : int
        Passes over the training split.
    batch_size : int
        Images per Adam step.
    learning_rate : float
        Adam's step size, for the networks and for ``log T`` alike.
    temperature_start, temperature_end : float
        Ends of the exponential annealing schedule, and the start of the learned
        temperature (``temperature_start``) with ``learn_temperature``.
    learn_temperature : bool
        Learn ``log T`` instead of annealing it.
    seed : int
        Seeds the initial weights, the batch order and the Gumbel noise.
    hidden : int
        Width of the hidden layer of both networks.
    eval_samples : int
        Noise draws averaged when an ELBO is evaluated.
    kl : str
        KL estimator, one of ``KL_ESTIMATORS``; see the module docstring.
    """

    epochs: int = 750
    batch_size: int = 100
    learning_rate: float = 1e-3
    temperature_start: float = 1.0
    temperature_end: float = 0.5
    learn_temperature: bool = False
    seed: int = 0
    hidden: int = HIDDEN
    eval_samples: int = 10
    kl: str = "analytic"


# ----------------------------------------------------------------------------
# Data


def load_split(held_out: int = N_HELD_OUT, seed: int = SPLIT_SEED):
    """Return the digits as ``(train, held_out)`` float64 arrays in [0, 1].

    Parameters
    ----------
    held_out : int
        Number of images kept out of training.
    seed : int
        Seed of the permutation; fixed so every run and the PyTorch benchmark
        see the same split.

    Returns
    -------
    train, test : numpy.ndarray
        Shapes ``(1797 - held_out, 64)`` and ``(held_out, 64)``.
    """
    from sklearn.datasets import load_digits

    images = load_digits().data.astype(np.float64) / 16.0
    order = np.random.default_rng(seed).permutation(len(images))
    return images[order[held_out:]], images[order[:held_out]]


# ----------------------------------------------------------------------------
# Model


def init_params(
    rng: np.random.Generator,
    hidden: int = HIDDEN,
    pixel_mean: np.ndarray | None = None,
) -> Params:
    """Draw initial weights for the encoder and decoder.

    Weights are normal with variance ``1 / fan_in``, which keeps tanh units out of
    saturation at the start. The decoder's output bias starts at the logit of the
    mean image, so the first steps do not spend themselves learning the average.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of the weights.
    hidden : int
        Hidden width of both networks.
    pixel_mean : numpy.ndarray, optional
        Mean training image, shape ``(64,)``; zeros if not given.

    Returns
    -------
    dict of str to numpy.ndarray
        float64 arrays named by ``ENCODER`` and ``DECODER``.
    """
    n_code = N_LATENT * N_CATEGORIES

    def dense(fan_in, fan_out):
        return rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)

    if pixel_mean is None:
        pixel_mean = np.full(N_PIXELS, 0.5)
    clipped = np.clip(pixel_mean, 1e-3, 1 - 1e-3)
    return {
        "enc_w1": dense(N_PIXELS, hidden),
        "enc_b1": np.zeros(hidden),
        "enc_w2": dense(hidden, n_code),
        "enc_b2": np.zeros(n_code),
        "dec_w1": dense(n_code, hidden),
        "dec_b1": np.zeros(hidden),
        "dec_w2": dense(hidden, N_PIXELS),
        "dec_b2": np.log(clipped) - np.log1p(-clipped),
    }


def encode(params: Params, images: np.ndarray):
    """Return the hidden layer and the ``(n, 8, 10)`` posterior logits."""
    hidden = np.tanh(images @ params["enc_w1"] + params["enc_b1"])
    logits = hidden @ params["enc_w2"] + params["enc_b2"]
    return hidden, logits.reshape(len(images), N_LATENT, N_CATEGORIES)


def decode(params: Params, codes: np.ndarray):
    """Return the hidden layer and the pixel logits for ``(n, 8, 10)`` codes."""
    flat = codes.reshape(len(codes), N_LATENT * N_CATEGORIES)
    hidden = np.tanh(flat @ params["dec_w1"] + params["dec_b1"])
    return hidden, hidden @ params["dec_w2"] + params["dec_b2"]


def bernoulli_log_likelihood(targets: np.ndarray, pixel_logits: np.ndarray):
    """Sum over pixels of ``t log s(l) + (1 - t) log(1 - s(l))``, s the sigmoid.

    Written as ``t l - softplus(l)``, with ``logaddexp(0, l)`` for the softplus so
    large logits neither overflow nor lose the ``log1p`` digits.
    """
    return (targets * pixel_logits - np.logaddexp(0.0, pixel_logits)).sum(axis=-1)


def _sigmoid(z):
    # exp of a non-positive number only, so no overflow warning at either end.
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def elbo_and_grads(
    params: Params,
    images: np.ndarray,
    temperature: float,
    rng=None,
    *,
    gumbels: np.ndarray | None = None,
    kl: str = "analytic",
):
    """Relaxed ELBO of a batch and its gradient with respect to every parameter.

    One noise draw per image: ``y ~ ExpRelaxed(T, encoder logits)``, ``x = exp(y)``,
    ``ELBO = log p(images | x) - KL``, averaged over the batch; see the module
    docstring for the two KL estimators.

    Parameters
    ----------
    params : dict of str to numpy.ndarray
        Weights from :func:`init_params` (float64).
    images : numpy.ndarray
        Batch, shape ``(n, 64)``, values in [0, 1].
    temperature : float
        Temperature of the posterior and of the prior, positive.
    rng : int, numpy.random.Generator or None
        Passed to ``rsample``; an int gives the same noise on every call, which
        makes the ELBO a deterministic function of the parameters.
    gumbels : numpy.ndarray, optional
        Gumbel noise of shape ``(n, 8, 10)``, used instead of ``rng``.
    kl : {"analytic", "relaxed"}
        KL estimator.

    Returns
    -------
    elbo : float
        Batch mean of the per-image ELBO, in nats.
    grads : dict of str to numpy.ndarray or float
        d ELBO / d parameter for every key of ``params``, plus ``"temperature"``
        (a float, d ELBO / d T).
    """
    if kl not in KL_ESTIMATORS:
        raise ValueError(f"kl must be one of {KL_ESTIMATORS}, got {kl!r}")
    n = len(images)
    enc_hidden, logits = encode(params, images)
    posterior = relaxcat.ExpRelaxedOneHotCategorical(temperature, logits=logits)
    y = posterior.rsample(rng=rng, gumbels=gumbels)
    codes = np.exp(y)
    dec_hidden, pixel_logits = decode(params, codes)

    # Forward: reconstruction minus the KL of each image, summed over latents.
    log_lik = bernoulli_log_likelihood(images, pixel_logits)
    if kl == "relaxed":
        # See Note [KL in log space].
        prior = relaxcat.ExpRelaxedOneHotCategorical(
            temperature, logits=np.zeros_like(logits)
        )
        kl_values = posterior.log_prob(y) - prior.log_prob(y)
    else:
        log_q = posterior.logits
        kl_values = (np.exp(log_q) * log_q).sum(axis=-1) + np.log(N_CATEGORIES)
    elbo = float(np.mean(log_lik - kl_values.sum(axis=-1)))
    grads = {}

    # Decoder, backwards from the pixel logits; 1/n because the ELBO is a mean.
    g_pix = (images - _sigmoid(pixel_logits)) / n
    grads["dec_w2"] = dec_hidden.T @ g_pix
    grads["dec_b2"] = g_pix.sum(axis=0)
    g_dec = (g_pix @ params["dec_w2"].T) * (1.0 - dec_hidden**2)
    grads["dec_w1"] = codes.reshape(n, -1).T @ g_dec
    grads["dec_b1"] = g_dec.sum(axis=0)
    g_codes = (g_dec @ params["dec_w1"].T).reshape(codes.shape)

    # Through the sampler: x = exp(y) gives dx/dy = x. The relaxed KL enters with
    # weight -1/n for q and +1/n for p; its value part joins the decoder's.
    g_y = g_codes * codes
    if kl == "relaxed":
        weight = np.full(y.shape[:-1], 1.0 / n)
        kl_q = posterior.log_prob_vjp(y, -weight)
        kl_p = prior.log_prob_vjp(y, weight)
        g_y = g_y + kl_q.value + kl_p.value
    through = posterior.rsample_vjp(y, g_y)
    g_logits = through.logits
    g_temperature = through.temperature

    # The KL's own dependence on the logits and the temperature. For the analytic
    # KL, d/da_j of sum_k q_k log q_k is q_j (log q_j - sum_k q_k log q_k).
    if kl == "relaxed":
        g_logits = g_logits + kl_q.logits
        g_temperature = g_temperature + kl_q.temperature + kl_p.temperature
    else:
        q = np.exp(log_q)
        entropy_term = (q * log_q).sum(axis=-1, keepdims=True)
        g_logits = g_logits - q * (log_q - entropy_term) / n
    g_logits = g_logits.reshape(n, -1)
    grads["temperature"] = float(g_temperature)

    # Encoder, backwards from the logits.
    grads["enc_w2"] = enc_hidden.T @ g_logits
    grads["enc_b2"] = g_logits.sum(axis=0)
    g_enc = (g_logits @ params["enc_w2"].T) * (1.0 - enc_hidden**2)
    grads["enc_w1"] = images.T @ g_enc
    grads["enc_b1"] = g_enc.sum(axis=0)
    return elbo, grads


def relaxed_elbo(
    params: Params, images, temperature, *, seed=0, samples=1, kl="analytic"
):
    """Mean relaxed ELBO over ``images``, averaged over ``samples`` noise draws.

    Draw ``i`` uses the int seed ``seed + i``, so two calls with the same
    arguments see the same noise and their difference is free of sampling noise.
    """
    values = [
        elbo_and_grads(params, images, temperature, rng=seed + i, kl=kl)[0]
        for i in range(samples)
    ]
    return float(np.mean(values))


def discrete_elbo(params: Params, images, *, seed=0, samples=1):
    """ELBO of the unrelaxed model: hard one-hot codes and the analytic KL.

    The code is the argmax of relaxcat's sample, which is a draw from the
    categorical posterior at any temperature; the KL to the uniform prior is
    ``sum_k q_k log q_k + log K`` per latent. This figure does not depend on the
    temperature, so runs with different schedules can be compared on it.
    """
    _, logits = encode(params, images)
    posterior = relaxcat.ExpRelaxedOneHotCategorical(1.0, logits=logits)
    log_q = posterior.logits
    kl = (np.exp(log_q) * log_q).sum(axis=(-2, -1)) + N_LATENT * np.log(N_CATEGORIES)
    values = []
    for i in range(samples):
        y = posterior.rsample(rng=seed + i)
        hard = np.eye(N_CATEGORIES)[y.argmax(axis=-1)]
        _, pixel_logits = decode(params, hard)
        values.append(np.mean(bernoulli_log_likelihood(images, pixel_logits) - kl))
    return float(np.mean(values))


# ----------------------------------------------------------------------------
# Training


class Adam:
    """Adam (Kingma & Ba, 2015) that ascends: ``p += lr * m_hat / (sqrt(v_hat) + eps)``.

    Parameters
    ----------
    learning_rate : float
        Step size.
    beta1, beta2, eps : float
        The usual constants of the method.
    """

    def __init__(self, learning_rate, beta1=0.9, beta2=0.999, eps=1e-8):
        self.learning_rate, self.beta1, self.beta2, self.eps = (
            learning_rate,
            beta1,
            beta2,
            eps,
        )
        self.moments = {}
        self.steps = 0

    def step(self, params: dict, grads: dict, names: Iterable[str]):
        """Move ``params[name]`` up ``grads[name]`` in place, for each name."""
        self.steps += 1
        correction1 = 1.0 - self.beta1**self.steps
        correction2 = 1.0 - self.beta2**self.steps
        for name in names:
            m, v = self.moments.get(name, (0.0, 0.0))
            m = self.beta1 * m + (1.0 - self.beta1) * grads[name]
            v = self.beta2 * v + (1.0 - self.beta2) * grads[name] ** 2
            self.moments[name] = (m, v)
            update = m / correction1 / (np.sqrt(v / correction2) + self.eps)
            params[name] = params[name] + self.learning_rate * update


def annealed_temperature(step: int, total_steps: int, start: float, end: float):
    """Exponential schedule: ``start`` at step 0, ``end`` at the last step."""
    fraction = step / max(total_steps - 1, 1)
    return float(start * (end / start) ** min(fraction, 1.0))


class Trainer:
    """Adam on the relaxed ELBO, with annealed or learned temperature.

    Parameters
    ----------
    params : dict of str to numpy.ndarray
        Initial weights; the trainer keeps and updates its own copy.
    settings : Settings
        Learning rate, temperature schedule and whether to learn it.
    total_steps : int
        Length of the run, which sets the pace of the annealing schedule.
    freeze : sequence of str
        ``"encoder"`` and/or ``"decoder"``: networks whose weights stay fixed.
        With the decoder frozen and ``settings.kl == "relaxed"``, only gradients
        that pass through relaxcat can change the ELBO, which the tests rely on.
    fault : str, optional
        One of ``FAULTS``, a deliberately wrong gradient for the tests:
        ``"flip-logits-gradient"`` negates the gradient with respect to the
        encoder's logits (and so every encoder gradient, which is linear in it);
        ``"zero-temperature-gradient"`` drops the temperature gradient and
        ``"flip-temperature-gradient"`` negates it.
    """

    def __init__(
        self,
        params: Params,
        settings: Settings,
        total_steps: int,
        *,
        freeze: Sequence[str] = (),
        fault: str | None = None,
    ):
        unknown = set(freeze) - {"encoder", "decoder"}
        if unknown:
            raise ValueError(
                f"freeze must name 'encoder' or 'decoder', got {sorted(unknown)}"
            )
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS} or None, got {fault!r}")
        self.params = {name: np.array(value) for name, value in params.items()}
        self.settings = settings
        self.total_steps = total_steps
        self.fault = fault
        self.trained = [
            name
            for net, names in (("encoder", ENCODER), ("decoder", DECODER))
            if net not in freeze
            for name in names
        ]
        self.log_temperature = np.log(settings.temperature_start)
        self.adam = Adam(settings.learning_rate)
        self.steps = 0

    @property
    def temperature(self) -> float:
        """Temperature that the next step will use."""
        if self.settings.learn_temperature:
            return float(np.exp(self.log_temperature))
        start, end = self.settings.temperature_start, self.settings.temperature_end
        return annealed_temperature(self.steps, self.total_steps, start, end)

    def step(self, images: np.ndarray, rng) -> float:
        """One Adam step on a batch; returns the batch ELBO before the step."""
        temperature = self.temperature
        elbo, grads = elbo_and_grads(
            self.params, images, temperature, rng, kl=self.settings.kl
        )
        if self.fault == "flip-logits-gradient":
            for name in ENCODER:
                grads[name] = -grads[name]
        if self.fault == "zero-temperature-gradient":
            grads["temperature"] = 0.0
        if self.fault == "flip-temperature-gradient":
            grads["temperature"] = -grads["temperature"]

        # log T is the learned parameter: d/d(log T) = T d/dT. It is clipped after
        # the step, so the range is a hard limit that Adam's momentum cannot cross.
        names = list(self.trained)
        if self.settings.learn_temperature:
            self.params["log_temperature"] = np.array(self.log_temperature)
            grads["log_temperature"] = temperature * grads["temperature"]
            names.append("log_temperature")
        self.adam.step(self.params, grads, names)
        if self.settings.learn_temperature:
            low, high = np.log(TEMPERATURE_MIN), np.log(TEMPERATURE_MAX)
            self.log_temperature = float(
                np.clip(self.params.pop("log_temperature"), low, high)
            )
        self.steps += 1
        return elbo


def train(
    images: np.ndarray,
    settings: Settings,
    steps: int,
    *,
    params: Params | None = None,
    freeze: Sequence[str] = (),
    fault: str | None = None,
) -> Trainer:
    """Train for ``steps`` Adam steps on shuffled batches of ``images``.

    A compact entry point for tests and notebooks; the demo's :func:`run` does the
    same with per-epoch evaluation, progress and output files.

    Parameters
    ----------
    images : numpy.ndarray
        Training images, shape ``(n, 64)``.
    settings : Settings
        Hyperparameters; ``settings.seed`` fixes weights, batch order and noise.
    steps : int
        Number of Adam steps; the annealing schedule spans them.
    params : dict, optional
        Initial weights; drawn from ``settings.seed`` if not given.
    freeze, fault
        As for :class:`Trainer`.

    Returns
    -------
    Trainer
        Holds the trained ``params`` and the final ``temperature``.
    """
    init_rng, order_rng, noise_rng = random_streams(settings.seed)
    if params is None:
        params = init_params(init_rng, settings.hidden, images.mean(axis=0))
    trainer = Trainer(params, settings, steps, freeze=freeze, fault=fault)
    batches = batch_indices(len(images), settings.batch_size, order_rng)
    with single_blas_thread():
        for _ in range(steps):
            trainer.step(images[next(batches)], noise_rng)
    return trainer


def single_blas_thread():
    """Context that runs NumPy's BLAS on one thread, if threadpoolctl is present.

    The matrices here are at most 100 x 256, too small to split: on two cores a
    second BLAS thread competes with relaxcat's own threads and the step gets 10 to
    30 times slower (measured with OpenBLAS 0.3.31), where one thread loses
    nothing. threadpoolctl comes with scikit-learn; without it this does nothing.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def random_streams(seed: int):
    """Independent generators for the initial weights, batch order and noise."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)]


def batch_indices(n: int, batch_size: int, rng: np.random.Generator):
    """Endless index batches: a fresh permutation each epoch, short tail dropped."""
    while True:
        order = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


# ----------------------------------------------------------------------------
# The demo


# What run() writes into its folder.
RESULTS_FILE = "results.json"
FIGURE_FILE = "digits_vae.png"
OUTPUT_FILES = (RESULTS_FILE, FIGURE_FILE)


def run(
    settings: Settings,
    out_dir: str,
    *,
    log: Callable[[str], None] = print,
    progress: Callable | None = None,
) -> dict:
    """Train on the digits, evaluate, and write ``results.json`` and a figure.

    Parameters
    ----------
    settings : Settings
        Hyperparameters of the run.
    out_dir : str
        Folder for ``results.json`` and ``digits_vae.png``; created if missing.
    log : callable
        Receives the header and one line per epoch.
    progress : callable, optional
        ``progress(total=steps)`` returning an object with ``update(n)`` and
        ``close()``, such as ``tqdm.tqdm``; no progress bar if not given.

    Returns
    -------
    dict
        The contents of ``results.json``.
    """
    with single_blas_thread():
        return _run(settings, out_dir, log, progress)


def _run(settings, out_dir, log, progress):
    os.makedirs(out_dir, exist_ok=True)  # an unusable folder fails before training
    train_images, test_images = load_split()
    init_rng, order_rng, noise_rng = random_streams(settings.seed)
    params = init_params(init_rng, settings.hidden, train_images.mean(axis=0))
    steps_per_epoch = len(train_images) // settings.batch_size
    total = settings.epochs * steps_per_epoch
    trainer = Trainer(params, settings, total)
    batches = batch_indices(len(train_images), settings.batch_size, order_rng)

    log(_header(settings, len(train_images), len(test_images)))
    history = {"epoch": [], "train_elbo": [], "held_out_elbo": [], "temperature": []}
    bar = progress(total=total) if progress is not None else None
    started = time.perf_counter()
    for epoch in range(1, settings.epochs + 1):
        epoch_start = time.perf_counter()
        batch_elbos = []
        for _ in range(steps_per_epoch):
            batch_elbos.append(trainer.step(train_images[next(batches)], noise_rng))
            if bar is not None:
                bar.update(1)
        seconds = time.perf_counter() - epoch_start
        rate = steps_per_epoch * settings.batch_size / seconds

        # The train figure is the mean over the epoch's batches (free); the
        # held-out one is evaluated with fixed noise at the current temperature.
        temperature = trainer.temperature
        held_out = relaxed_elbo(
            trainer.params, test_images, temperature, seed=1, kl=settings.kl
        )
        for key, value in zip(
            history, (epoch, float(np.mean(batch_elbos)), held_out, temperature)
        ):
            history[key].append(value)
        log(
            f"epoch {epoch:3d}  train ELBO {history['train_elbo'][-1]:9.3f}  "
            f"held-out ELBO {held_out:9.3f}  T {temperature:.4f}  {rate:8.0f} ex/s"
        )
    if bar is not None:
        bar.close()
    train_time = time.perf_counter() - started

    # Final figures on the whole of both sets, several fixed noise draws each.
    n_eval = settings.eval_samples
    final_t = trainer.temperature
    final = dict(samples=n_eval, kl=settings.kl)
    results = {
        "train_elbo": relaxed_elbo(trainer.params, train_images, final_t, **final),
        "held_out_elbo": relaxed_elbo(trainer.params, test_images, final_t, **final),
        "train_elbo_discrete": discrete_elbo(
            trainer.params, train_images, samples=n_eval
        ),
        "held_out_elbo_discrete": discrete_elbo(
            trainer.params, test_images, samples=n_eval
        ),
        "final_temperature": final_t,
        "train_wall_time_s": train_time,
        "wall_time_s": None,
        "examples_per_s": total * settings.batch_size / train_time,
        "n_train": len(train_images),
        "n_held_out": len(test_images),
        "steps": total,
        "kl": KL_DESCRIPTIONS[settings.kl],
        "dtype": "float64",
        "relaxcat_version": getattr(relaxcat, "__version__", "unknown"),
        "settings": dataclasses.asdict(settings),
        "history": history,
    }
    log(
        f"final: train ELBO {results['train_elbo']:.3f}  held-out ELBO "
        f"{results['held_out_elbo']:.3f}  at T {final_t:.4f}  (discrete: train "
        f"{results['train_elbo_discrete']:.3f}, held-out "
        f"{results['held_out_elbo_discrete']:.3f})"
    )

    figure_path = os.path.join(out_dir, FIGURE_FILE)
    _plot(trainer.params, history, test_images, final_t, settings.seed, figure_path)
    results["wall_time_s"] = time.perf_counter() - started
    with open(os.path.join(out_dir, RESULTS_FILE), "w") as f:
        json.dump(results, f, indent=2)
    log(
        f"wrote {figure_path} and {RESULTS_FILE} in {results['wall_time_s']:.1f} s "
        f"(training {train_time:.1f} s)"
    )
    return results


def _header(settings: Settings, n_train: int, n_held_out: int) -> str:
    if settings.learn_temperature:
        schedule = (
            f"learned from {settings.temperature_start} "
            f"(clipped to [{TEMPERATURE_MIN}, {TEMPERATURE_MAX}])"
        )
    else:
        schedule = (
            f"annealed {settings.temperature_start} -> {settings.temperature_end} "
            "(exponential)"
        )
    return "\n".join(
        [
            f"relaxcat demo: categorical VAE on digits ({n_train} train, "
            f"{n_held_out} held out), {N_LATENT} x {N_CATEGORIES} latent, float64",
            f"  KL: {KL_DESCRIPTIONS[settings.kl]}",
            f"  temperature: {schedule}",
            f"  {settings.epochs} epochs, batch {settings.batch_size}, "
            f"Adam lr {settings.learning_rate}, seed {settings.seed}",
        ]
    )


def _plot(params, history, test_images, temperature, seed, path):
    """ELBO curves, held-out inputs beside reconstructions, samples from the prior."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    # Reconstructions decode the posterior mode, so the figure has no noise in it.
    inputs = test_images[:10]
    _, logits = encode(params, inputs)
    mode = np.eye(N_CATEGORIES)[logits.argmax(axis=-1)]
    recon = _sigmoid(decode(params, mode)[1])

    # Prior samples at the final temperature, drawn and decoded like training codes.
    prior = relaxcat.ExpRelaxedOneHotCategorical(
        temperature, logits=np.zeros((N_LATENT, N_CATEGORIES))
    )
    codes = np.exp(prior.rsample((30,), rng=seed))
    samples = _sigmoid(decode(params, codes)[1])

    fig = plt.figure(figsize=(12, 5.5), layout="constrained")
    grid = fig.add_gridspec(2, 2, width_ratios=[1, 1.3], height_ratios=[2, 3])
    ax = fig.add_subplot(grid[:, 0])
    ax.plot(history["epoch"], history["train_elbo"], label="train (batch mean)")
    ax.plot(history["epoch"], history["held_out_elbo"], label="held out")
    ax.set(xlabel="epoch", ylabel="relaxed ELBO (nats)", title="ELBO")
    ax.legend()
    ax = fig.add_subplot(grid[0, 1])
    ax.imshow(_tile(np.concatenate([inputs, recon]), 2, 10), cmap="gray_r")
    ax.set_title("held-out inputs (top) and reconstructions from the posterior mode")
    ax.axis("off")
    ax = fig.add_subplot(grid[1, 1])
    ax.imshow(_tile(samples, 3, 10), cmap="gray_r")
    ax.set_title(f"decoded samples of the relaxed uniform prior, T = {temperature:.2f}")
    ax.axis("off")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _tile(images, rows, cols, gap=1):
    """Lay ``rows * cols`` 8x8 images out in one array with a blank gap."""
    size = 8 + gap
    canvas = np.zeros((rows * size - gap, cols * size - gap))
    for i, image in enumerate(images[: rows * cols]):
        r, c = divmod(i, cols)
        canvas[r * size : r * size + 8, c * size : c * size + 8] = image.reshape(8, 8)
    return canvas


# ----------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the demo's options to ``parser``; shared by ``python -m relaxcat demo``."""
    defaults = Settings()
    parser.add_argument(
        "--epochs",
        type=int,
        default=defaults.epochs,
        help="passes over the data (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help="seeds weights, batches and noise (default: %(default)s)",
    )
    parser.add_argument(
        "--out", default="relaxcat-demo", help="output folder (default: %(default)s)"
    )
    parser.add_argument(
        "--learn-temperature",
        action="store_true",
        help="learn log T with relaxcat's temperature gradient instead of annealing",
    )
    parser.add_argument(
        "--kl",
        choices=KL_ESTIMATORS,
        default=defaults.kl,
        help="KL estimator (default: %(default)s; see relaxcat.demo's docstring)",
    )
    return parser


def missing_extras() -> list[str]:
    """Names of the ``demo`` extra's packages that cannot be imported."""
    missing = []
    for module, package in (
        ("sklearn", "scikit-learn"),
        ("matplotlib", "matplotlib"),
        ("tqdm", "tqdm"),
    ):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    return missing


def _unwritable(out_dir: str, create: bool = True) -> str:
    """Why ``out_dir`` cannot take the demo's files, or ''. With ``create`` the
    folder is made if missing; without, only its nearest existing parent is
    looked at, so that nothing is made before the other checks pass. A file the
    demo writes that stands there as a folder, or cannot be written, counts too
    (a second look at a fifth fresh-user review: ``digits_vae.png`` as a folder
    ended the run, after training, in a traceback)."""
    if not out_dir:
        return "the path is empty"
    if "\0" in out_dir:
        return "embedded null byte"
    if create:
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as exc:
            return exc.strerror or str(exc)
    elif not os.path.exists(out_dir):
        parent = os.path.dirname(os.path.abspath(out_dir))
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            return f"{parent} is not a folder"
        return (
            "" if os.access(parent, os.W_OK | os.X_OK) else f"{parent} is not writable"
        )
    if not os.path.isdir(out_dir):
        return "not a folder"
    if not os.access(out_dir, os.W_OK | os.X_OK):
        return "not writable"
    for name in OUTPUT_FILES:
        path = os.path.join(out_dir, name)
        if os.path.isdir(path):
            return f"{name} there is a folder"
        if os.path.exists(path) and not os.access(path, os.W_OK):
            return f"{name} there is not writable"
    return ""


def main(argv: Sequence[str] | None = None, args=None) -> int:
    """Run the demo from the command line; returns the exit status.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments after ``demo``; ``sys.argv[1:]`` if neither is given.
    args : argparse.Namespace, optional
        Already parsed options (used by ``python -m relaxcat``).

    Returns
    -------
    int
        0 on success, 1 if a package of the ``demo`` extra is missing (reported in
        one line on stderr), ``--epochs`` is not positive, ``--seed`` is not in
        [0, 2**64) or ``--out`` cannot be made or written.
    """
    if args is None:
        parser = argparse.ArgumentParser(
            prog="python -m relaxcat demo", description=__doc__.splitlines()[0]
        )
        args = add_arguments(parser).parse_args(argv)
    # The numbers first: they are wrong whatever is installed.
    if args.epochs < 1:
        print(f"--epochs must be at least 1, got {args.epochs}", file=sys.stderr)
        return 1
    if not 0 <= args.seed < 2**64:
        # The figure's samples take the seed as relaxcat's int seed.
        print(f"--seed must be in [0, 2**64), got {args.seed}", file=sys.stderr)
        return 1
    # Before training, not after it: a folder that cannot be written would
    # otherwise cost the whole run. Looked at first without making it, so that
    # a missing package leaves no folder behind, then made.
    problem = _unwritable(args.out, create=False)
    if not problem:
        missing = missing_extras()
        if missing:
            print(
                f"relaxcat demo needs {', '.join(missing)}: pip install "
                '"relaxcat[demo]"',
                file=sys.stderr,
            )
            return 1
        problem = _unwritable(args.out, create=True)
    if problem:
        print(f"--out {args.out!r} cannot hold the results: {problem}", file=sys.stderr)
        return 1

    from tqdm import tqdm

    settings = Settings(
        epochs=args.epochs,
        seed=args.seed,
        learn_temperature=args.learn_temperature,
        kl=args.kl,
    )

    def progress(total):
        return tqdm(total=total, unit="step", leave=False, dynamic_ncols=True)

    run(settings, args.out, log=tqdm.write, progress=progress)
    return 0
