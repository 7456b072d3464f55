"""What this build of relaxcat is and how it runs."""

from __future__ import annotations

import sys

from . import _core, _threads

__all__ = ["show_config", "config"]


def config() -> dict:
    """Version, build and run-time facts as a dict."""
    return {
        "version": _core.__version__,
        "simd_level": _core.simd_level(),
        "available_simd_levels": list(_core.available_simd_levels()),
        "num_threads": _threads.get_num_threads(),
        "hardware_threads": _core.hardware_threads(),
        "compiler": _core.compiler,
        "build_type": _core.build_type,
        "python": sys.version.split()[0],
    }


def show_config() -> None:
    """Print the version, the build and the SIMD level in use.

    The level is chosen once, at import, as the best this CPU runs; the
    environment variable ``RELAXCAT_SIMD`` (``avx512``, ``avx2`` or
    ``baseline``) forces a lower one.
    """
    for key, value in config().items():
        print(f"{key:>22}: {value}")
