"""relaxcat: the RelaxedOneHotCategorical (Concrete, Gumbel-Softmax) distribution
for NumPy, computed by a header-only C++17 core."""

from . import _config, _core, constraints
from ._config import RelaxcatWarning, show_config
from ._extras import (
    HardSample,
    MonteCarloEstimate,
    categorical_kl,
    gumbel_softmax,
    gumbel_softmax_vjp,
    kl_divergence,
)
from ._threads import get_num_threads, set_num_threads
from .distributions import (
    ExpRelaxedOneHotCategorical,
    LogProbGrad,
    LogProbGradProbs,
    RelaxedOneHotCategorical,
    RsampleGrad,
    RsampleGradProbs,
)

__version__ = _core.__version__

_config.check_simd_environment()

__all__ = [
    "ExpRelaxedOneHotCategorical",
    "HardSample",
    "LogProbGrad",
    "LogProbGradProbs",
    "MonteCarloEstimate",
    "RelaxedOneHotCategorical",
    "RelaxcatWarning",
    "RsampleGrad",
    "RsampleGradProbs",
    "categorical_kl",
    "constraints",
    "get_num_threads",
    "gumbel_softmax",
    "gumbel_softmax_vjp",
    "kl_divergence",
    "set_num_threads",
    "show_config",
]
