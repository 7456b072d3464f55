"""Train a categorical (Gumbel-Softmax) VAE on scikit-learn's digits.

The same as ``python -m relaxcat demo``; run ``python examples/digits_vae.py
--help`` for the options. The code lives in :mod:`relaxcat.demo`.
"""

import sys

from relaxcat import demo

if __name__ == "__main__":
    sys.exit(demo.main())
