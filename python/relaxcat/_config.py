"""What this build of relaxcat is and how it runs."""

from __future__ import annotations

import os
import sys
import warnings

from . import _core, _threads

__all__ = ["RelaxcatWarning", "show_config", "config", "check_simd_environment"]


class RelaxcatWarning(UserWarning):
    """A warning from relaxcat about something the user can change."""


def check_simd_environment() -> None:
    """Warn when RELAXCAT_SIMD names a level that is not in use.

    The compiled core reads the variable once, at import, and falls back to the
    best level when it names one this build or CPU lacks (or is misspelt);
    without this warning that fallback would be silent.
    """
    wanted = os.environ.get("RELAXCAT_SIMD", "")
    if wanted and wanted.lower() != _core.simd_level():
        levels = ", ".join(_core.available_simd_levels())
        warnings.warn(
            f"RELAXCAT_SIMD={wanted!r} is not a level this build and CPU offer "
            f"({levels}); using {_core.simd_level()!r}",
            RelaxcatWarning,
            stacklevel=3,
        )


def config() -> dict:
    """Version, build and run-time facts as a dict. ``RELAXCAT_SIMD`` is the
    environment variable as set (None when it is not), ``build_type`` None for
    a build that named none."""
    import numpy

    return {
        "version": _core.__version__,
        "simd_level": _core.simd_level(),
        "available_simd_levels": list(_core.available_simd_levels()),
        "RELAXCAT_SIMD": os.environ.get("RELAXCAT_SIMD"),
        "num_threads": _threads.get_num_threads(),
        "hardware_threads": _core.hardware_threads(),
        "compiler": _core.compiler,
        "build_type": _core.build_type or None,
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
    }


def show_config() -> None:
    """Print the version, the build and the SIMD level in use.

    The level is chosen once, at import, as the best this CPU runs; the
    environment variable ``RELAXCAT_SIMD`` (``avx512``, ``avx2`` or
    ``baseline``) forces a lower one.
    """
    for key, value in config().items():
        if isinstance(value, list):
            value = ", ".join(value)
        elif value is None:
            value = "(not set)"
        print(f"{key:>22}: {value}")
