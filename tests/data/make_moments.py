"""Write moments_reference.json: 15-digit mpmath references for the mean and
variance of the Concrete distribution at T = 1, where the inner expectations
have closed forms, for tests/python/test_moments.py.

At T = 1, V = p / E with E ~ Exp(1), and
    E[V^n exp(-t V)] = 2 p^n c^((1 - n) / 2) K_{|n - 1|}(2 sqrt(c)),  c = t p,
(the integral representation of the modified Bessel function K), so the moments
are one-dimensional integrals over t = exp(u) of products of Bessel functions:
    E[x_k]   = int E[V_k e^(-t V_k)] prod_{j != k} E[e^(-t V_j)] dt,
    E[x_k^2] = int t E[V_k^2 e^(-t V_k)] prod_{j != k} E[e^(-t V_j)] dt.
This shares no code and no inner quadrature with the C++ core. It takes about a
minute. Run from the repository root: python tests/data/make_moments.py
"""

from __future__ import annotations

import functools
import json
import pathlib

import mpmath as mp

mp.mp.dps = 20

CASES = [
    [1.0, 0.0, -1.0],
    [0.3, -1.2, 2.0, 0.0],
    [4.0, 0.0, -2.0],
]


def reference(logits):
    p = [mp.exp(mp.mpf(x)) for x in logits]
    total = mp.fsum(p)
    p = [x / total for x in p]
    k = len(p)

    @functools.cache
    def inner(n, j, u):
        c = mp.exp(u) * p[j]
        return (
            p[j] ** n
            * 2
            * c ** ((1 - mp.mpf(n)) / 2)
            * mp.besselk(abs(n - 1), 2 * mp.sqrt(c))
        )

    def outer(fn):
        # t = e^u; the integrands fall like e^u on the left and like
        # exp(-2 sqrt(p e^u)) on the right: below 1e-30 by u = 10 for these cases.
        return mp.quad(lambda u: mp.exp(u) * fn(u), [-70, -20, -5, 0, 5, 10])

    def rest(u, k_):
        return mp.fprod(inner(0, j, u) for j in range(k) if j != k_)

    mean = [outer(lambda u, i=i: inner(1, i, u) * rest(u, i)) for i in range(k)]
    second = [
        outer(lambda u, i=i: mp.exp(u) * inner(2, i, u) * rest(u, i)) for i in range(k)
    ]
    var = [s - m * m for s, m in zip(second, mean)]
    return mean, var


def main():
    cases = []
    for logits in CASES:
        mean, var = reference(logits)
        cases.append(
            {
                "logits": logits,
                "temperature": 1.0,
                "mean": [mp.nstr(x, 17) for x in mean],
                "variance": [mp.nstr(x, 17) for x in var],
            }
        )
        print(logits, [mp.nstr(x, 10) for x in mean], flush=True)
    path = pathlib.Path(__file__).resolve().parent / "moments_reference.json"
    path.write_text(json.dumps({"dps": mp.mp.dps, "cases": cases}, indent=1) + "\n")


if __name__ == "__main__":
    main()
