"""The digits VAE of ``relaxcat.demo``, trained again in PyTorch, side by side.

Same data split, initial weights, batch order, architecture, objective, Adam
settings and temperature schedule; the PyTorch run draws its relaxed codes with
``torch.distributions.RelaxedOneHotCategorical`` and gets its gradients from
autograd. Only the Gumbel noise differs: each library draws its own.

Before anything is timed, both implementations evaluate the ELBO and every
gradient on one batch with the same Gumbel noise and must agree to
``AGREE_RTOL``. Both trained models are then scored by one evaluator (the demo's,
on the held-out images with fixed noise), so the ELBOs differ only by training.

Writes ``bench/vae_compare.json`` and prints a table. Needs ``torch`` (the
``bench`` extra) and the ``demo`` extra::

    python bench/vae_torch.py [--epochs N] [--seed S] [--kl {analytic,relaxed}]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time

import numpy as np

import relaxcat
from relaxcat import demo

# float64 on both sides: the sums differ only in order, a few ulps of ~30 nats,
# while a real mismatch of the model or a gradient is off by far more.
AGREE_RTOL = 1e-9
AGREE_ATOL = 1e-10

HERE = os.path.dirname(os.path.abspath(__file__))


def _import_torch():
    try:
        import torch
    except ImportError:
        sys.exit('bench/vae_torch.py needs torch: pip install "relaxcat[bench]"')
    return torch


# ----------------------------------------------------------------------------
# The model in PyTorch


def torch_elbo(torch, params, images, temperature, *, kl, gumbels=None):
    """Batch-mean relaxed ELBO, written with torch.distributions.

    ``params`` are leaf tensors named as in :func:`relaxcat.demo.init_params`.
    With ``gumbels`` given the relaxed sample is formed from that noise by the
    distribution's own recipe (for the agreement check); otherwise it comes from
    ``RelaxedOneHotCategorical.rsample``, which draws from torch's global
    generator (seeded once per run in :func:`train_torch`).
    """
    from torch.distributions import RelaxedOneHotCategorical

    n = images.shape[0]
    hidden = torch.tanh(images @ params["enc_w1"] + params["enc_b1"])
    logits = (hidden @ params["enc_w2"] + params["enc_b2"]).reshape(
        n, demo.N_LATENT, demo.N_CATEGORIES
    )
    t = torch.as_tensor(temperature, dtype=images.dtype)
    posterior = RelaxedOneHotCategorical(t, logits=logits)

    # torch's sampler is softmax((logits + G) / T) on normalised logits; the
    # explicit form lets the agreement check feed it relaxcat's noise.
    if gumbels is None:
        codes = posterior.rsample()
    else:
        codes = torch.softmax((posterior.logits + gumbels) / t, dim=-1)

    hidden = torch.tanh(codes.reshape(n, -1) @ params["dec_w1"] + params["dec_b1"])
    pixel_logits = hidden @ params["dec_w2"] + params["dec_b2"]
    log_lik = -torch.nn.functional.binary_cross_entropy_with_logits(
        pixel_logits, images, reduction="none"
    ).sum(-1)
    if kl == "relaxed":
        prior = RelaxedOneHotCategorical(t, logits=torch.zeros_like(logits))
        kl_values = posterior.log_prob(codes) - prior.log_prob(codes)
    else:
        log_q = posterior.logits
        kl_values = (log_q.exp() * log_q).sum(-1) + np.log(demo.N_CATEGORIES)
    return (log_lik - kl_values.sum(-1)).mean()


def train_torch(torch, settings, train_images, threads):
    """Train with torch.optim.Adam on the demo's batches; returns weights, time."""
    torch.set_num_threads(threads)
    torch.manual_seed(settings.seed)
    init_rng, order_rng, _ = demo.random_streams(settings.seed)
    start = demo.init_params(init_rng, settings.hidden, train_images.mean(axis=0))
    params = {k: torch.tensor(v, requires_grad=True) for k, v in start.items()}
    log_t = torch.tensor(np.log(settings.temperature_start), requires_grad=True)
    trained = list(params.values()) + ([log_t] if settings.learn_temperature else [])
    optimizer = torch.optim.Adam(trained, lr=settings.learning_rate, eps=1e-8)
    images = torch.tensor(train_images)

    steps = settings.epochs * (len(train_images) // settings.batch_size)
    batches = demo.batch_indices(len(train_images), settings.batch_size, order_rng)
    started = time.perf_counter()
    for step in range(steps):
        if settings.learn_temperature:
            temperature = log_t.exp()
        else:
            temperature = demo.annealed_temperature(
                step,
                steps,
                settings.temperature_start,
                settings.temperature_end,
            )
        index = torch.from_numpy(next(batches))
        loss = -torch_elbo(torch, params, images[index], temperature, kl=settings.kl)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if settings.learn_temperature:
            with torch.no_grad():
                log_t.clamp_(np.log(demo.TEMPERATURE_MIN), np.log(demo.TEMPERATURE_MAX))
    elapsed = time.perf_counter() - started

    final_t = float(log_t.exp()) if settings.learn_temperature else temperature
    weights = {k: v.detach().numpy().copy() for k, v in params.items()}
    return weights, final_t, elapsed


def train_relaxcat(settings, train_images):
    """The demo's own training loop, without its per-epoch evaluation."""
    init_rng, order_rng, noise_rng = demo.random_streams(settings.seed)
    start = demo.init_params(init_rng, settings.hidden, train_images.mean(axis=0))
    steps = settings.epochs * (len(train_images) // settings.batch_size)
    trainer = demo.Trainer(start, settings, steps)
    batches = demo.batch_indices(len(train_images), settings.batch_size, order_rng)
    started = time.perf_counter()
    with demo.single_blas_thread():
        for _ in range(steps):
            trainer.step(train_images[next(batches)], noise_rng)
    return trainer.params, trainer.temperature, time.perf_counter() - started


# ----------------------------------------------------------------------------
# Agreement, then timing


def check_agreement(torch, settings, train_images):
    """Same weights, batch and Gumbel noise: ELBO and all gradients must agree."""
    rng = np.random.default_rng(settings.seed)
    start = demo.init_params(rng, settings.hidden, train_images.mean(axis=0))
    batch = train_images[: settings.batch_size]
    uniforms = rng.random((len(batch), demo.N_LATENT, demo.N_CATEGORIES))
    gumbels = -np.log(-np.log(uniforms))
    temperature = 0.7

    elbo, grads = demo.elbo_and_grads(
        start, batch, temperature, gumbels=gumbels, kl=settings.kl
    )
    params = {k: torch.tensor(v, requires_grad=True) for k, v in start.items()}
    t = torch.tensor(temperature, dtype=torch.float64, requires_grad=True)
    value = torch_elbo(
        torch,
        params,
        torch.tensor(batch),
        t,
        kl=settings.kl,
        gumbels=torch.tensor(gumbels),
    )
    value.backward()

    value = float(value.detach())
    worst = abs(value - elbo) / abs(elbo)
    np.testing.assert_allclose(value, elbo, rtol=AGREE_RTOL, err_msg="ELBO")
    for name, tensor in list(params.items()) + [("temperature", t)]:
        got = tensor.grad.numpy()
        np.testing.assert_allclose(
            got, grads[name], rtol=AGREE_RTOL, atol=AGREE_ATOL, err_msg=name
        )
        scale = np.maximum(np.abs(grads[name]), AGREE_ATOL / AGREE_RTOL)
        worst = max(worst, float(np.max(np.abs(got - grads[name]) / scale)))
    return worst


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = demo.Settings()
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--kl", choices=demo.KL_ESTIMATORS, default=defaults.kl)
    parser.add_argument("--learn-temperature", action="store_true")
    parser.add_argument(
        "--torch-threads",
        type=int,
        nargs="+",
        default=[1],
        help="intra-op thread counts to time torch with (default: 1; on a two-core "
        "machine two threads made these tiny steps about 20x slower)",
    )
    parser.add_argument(
        "--out", default=os.path.join(HERE, "vae_compare.json"), help="JSON report"
    )
    args = parser.parse_args(argv)
    missing = demo.missing_extras()
    if missing:
        needs = ", ".join(missing)
        sys.exit(f'bench/vae_torch.py needs {needs}: pip install "relaxcat[demo]"')
    torch = _import_torch()
    torch.set_default_dtype(torch.float64)

    settings = dataclasses.replace(
        defaults,
        epochs=args.epochs,
        seed=args.seed,
        kl=args.kl,
        learn_temperature=args.learn_temperature,
    )
    train_images, test_images = demo.load_split()
    worst = check_agreement(torch, settings, train_images)
    print(f"agreement on one batch, same noise: ELBO and gradients within {worst:.1e}")

    runs = [("relaxcat + NumPy", lambda: train_relaxcat(settings, train_images))]
    for threads in args.torch_threads:
        runs.append(
            (
                f"torch {torch.__version__}, {threads} thread(s)",
                lambda n=threads: train_torch(torch, settings, train_images, n),
            )
        )

    rows = []
    for name, fit in runs:
        weights, temperature, seconds = fit()
        score = dict(samples=settings.eval_samples, kl=settings.kl)
        rows.append(
            {
                "implementation": name,
                "train_seconds": seconds,
                "final_temperature": temperature,
                "held_out_elbo": demo.relaxed_elbo(
                    weights, test_images, temperature, **score
                ),
                "train_elbo": demo.relaxed_elbo(
                    weights, train_images, temperature, **score
                ),
                "held_out_elbo_discrete": demo.discrete_elbo(
                    weights, test_images, samples=settings.eval_samples
                ),
            }
        )
        print(f"  trained {name} in {seconds:.1f} s", flush=True)

    base = rows[0]["train_seconds"]
    print()
    print(
        f"{'implementation':34s} {'train s':>8s} {'vs relaxcat':>11s} "
        f"{'held-out ELBO':>14s} {'discrete':>9s} {'train ELBO':>11s} {'T':>6s}"
    )
    for row in rows:
        print(
            f"{row['implementation']:34s} {row['train_seconds']:8.1f} "
            f"{row['train_seconds'] / base:10.2f}x {row['held_out_elbo']:14.3f} "
            f"{row['held_out_elbo_discrete']:9.3f} {row['train_elbo']:11.3f} "
            f"{row['final_temperature']:6.3f}"
        )

    report = {
        "what": "digits VAE (relaxcat.demo) trained by relaxcat + NumPy and by "
        "torch.distributions + autograd, same split, weights, batches and "
        "hyperparameters; ELBOs scored by the demo's evaluator",
        "settings": dataclasses.asdict(settings),
        "kl": demo.KL_DESCRIPTIONS[settings.kl],
        "agreement_max_rel_diff": worst,
        "steps": settings.epochs * (len(train_images) // settings.batch_size),
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "relaxcat": relaxcat.__version__,
            "torch": torch.__version__,
            "relaxcat_threads": relaxcat.get_num_threads(),
            "numpy_blas_threads": 1,
        },
        "runs": rows,
    }
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
