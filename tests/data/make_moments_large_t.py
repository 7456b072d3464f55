"""Write moments_large_t.json: mpmath references for the mean and covariance of
the Concrete distribution at large temperatures (T >= 1000), for
tests/python/test_moments.py.

The representation is the raw one the C++ core abandons at large T, computed at
enough digits that its cancellation is harmless (mp.dps = 40 + 2 log10 T). With
c_j = exp((a_j - max a) / T), W_j = exp(G_j / T) and C = sum_j c_j,
    E[x_k]     = int_0^inf E[c_k W_k e^(-t c_k W_k)] prod_{j != k} E[e^(-t c_j W_j)] dt
    E[x_k x_l] = int_0^inf t (the same with c_k W_k c_l W_l, or (c_k W_k)^2) dt.
After t = y / C the factor exp(-y) is the weight of a 60-point Gauss-Laguerre rule
(checked against 80 points when the file is made). Each inner expectation
E[W^n exp(-lam (W - 1))] is the Taylor series in 1/T of
h(z) = exp(n z - lam (e^z - 1)) at z = G / T, whose derivatives at 0 follow from
h' = (n - lam e^z) h, against the Gumbel raw moments (from the cumulants
gamma, (n - 1)! zeta(n)). The series is asymptotic, not convergent, but at
T >= 1000 its terms fall below 10^-dps long before they grow. Nothing here is
shared with the C++ core's method. Run from the repository root (a few minutes):
python tests/data/make_moments_large_t.py
"""

from __future__ import annotations

import json
import math
import pathlib

import mpmath as mp

MAX_ORDER = 200
NINF = -math.inf

CASES = [
    ([1.0, 0.0, -1.0], [1e3, 1e4, 1e6, 1e9, 1e15, 1e100]),
    ([0.05, -0.05], [1e3, 1e6]),
    ([3.0, -2.0, 0.5, 1.0, -0.5], [1e3, 1e4, 1e6, 1e9]),
    ([40.0, 0.0, -20.0], [1e3, 1e4, 1e9, 1e15]),
    ([2.0, NINF, 0.0, -1.0], [1e3, 1e6]),
    ([1000.0, 0.0, -1000.0], [1e3]),
    ([0.1 * math.sin(j) for j in range(50)], [1e3, 1e6]),
    ([5.0 * math.cos(3 * j) for j in range(50)], [1e3]),
]


def gumbel_raw_moments(n):
    kappa = [None, +mp.euler] + [
        mp.factorial(j - 1) * mp.zeta(j) for j in range(2, n + 1)
    ]
    m = [mp.mpf(1)]
    for q in range(1, n + 1):
        m.append(
            mp.fsum(
                mp.binomial(q - 1, j - 1) * kappa[j] * m[q - j] for j in range(1, q + 1)
            )
        )
    return m


def tilted(n, lam, scaled, tol):
    """E[W^n exp(-lam (W - 1))] by its series in 1/T."""
    coef, total, small = [mp.mpf(1)], mp.mpf(1), 0
    for q in range(1, MAX_ORDER + 1):
        new = [mp.mpf(0)] * (len(coef) + 1)
        for r, a in enumerate(coef):
            new[r] += (r + n) * a
            new[r + 1] -= lam * a
        coef = new
        term = scaled[q] * mp.fsum(coef)
        total += term
        small = small + 1 if abs(term) < tol * abs(total) else 0
        if small >= 3:
            return total
    raise RuntimeError(f"series in 1/T did not converge (n={n}, lam={lam})")


def reference(logits, t, n_outer=60):
    k = len(logits)
    live = [i for i in range(k) if logits[i] != NINF]
    t_mp = mp.mpf(t)
    amax = max(mp.mpf(logits[i]) for i in live)
    c = {i: mp.exp((mp.mpf(logits[i]) - amax) / t_mp) for i in live}
    big_c = mp.fsum(c.values())
    gm = gumbel_raw_moments(MAX_ORDER)
    scaled = [gm[q] / mp.factorial(q) / t_mp**q for q in range(MAX_ORDER + 1)]
    tol = mp.mpf(10) ** (-mp.mp.dps)
    mean = [mp.mpf(0)] * k
    e2 = [[mp.mpf(0)] * k for _ in range(k)]
    for y, w in zip(*mp.gauss_quadrature(n_outer, "laguerre")):
        tt = y / big_c
        l0 = {j: tilted(0, tt * c[j], scaled, tol) for j in live}
        l1 = {j: c[j] * tilted(1, tt * c[j], scaled, tol) for j in live}
        l2 = {j: c[j] ** 2 * tilted(2, tt * c[j], scaled, tol) for j in live}
        prod = mp.fprod(l0.values())
        for i in live:
            rest = prod / l0[i]
            mean[i] += w * l1[i] * rest
            e2[i][i] += w * tt * l2[i] * rest
            for j in live:
                if j > i:
                    e2[i][j] += w * tt * l1[i] * l1[j] * rest / l0[j]
    mean = [x / big_c for x in mean]
    cov = [[mp.mpf(0)] * k for _ in range(k)]
    for i in live:
        for j in live:
            if j >= i:
                cov[i][j] = cov[j][i] = e2[i][j] / big_c - mean[i] * mean[j]
    return mean, cov


def main():
    cases = []
    for logits, temps in CASES:
        for t in temps:
            mp.mp.dps = 40 + int(2 * math.log10(t))
            mean, cov = reference(logits, t)
            if len(logits) <= 5:
                # The outer rule's own error: 60 against 80 points.
                _, cov80 = reference(logits, t, 80)
                err = max(
                    abs(a - b) for r, r80 in zip(cov, cov80) for a, b in zip(r, r80)
                )
                big = max(abs(x) for r in cov for x in r)
                assert err < mp.mpf(10) ** -25 * big, (logits, t, err / big)
            cases.append(
                {
                    "logits": [x if x != NINF else "-inf" for x in logits],
                    "temperature": t,
                    "dps": mp.mp.dps,
                    "mean": [mp.nstr(x, 20) for x in mean],
                    "covariance": [[mp.nstr(x, 20) for x in r] for r in cov],
                }
            )
            print(len(logits), t, flush=True)
    path = pathlib.Path(__file__).resolve().parent / "moments_large_t.json"
    path.write_text(json.dumps({"cases": cases}, indent=1) + "\n")


if __name__ == "__main__":
    main()
