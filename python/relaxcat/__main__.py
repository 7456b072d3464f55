"""Command line of relaxcat: ``python -m relaxcat [--cmake-dir] {demo} ...``.

``--cmake-dir`` prints the folder that holds the CMake package configuration
shipped in the wheel, for ``-Drelaxcat_DIR=$(python -m relaxcat --cmake-dir)``.
``demo`` trains the categorical VAE of :mod:`relaxcat.demo`.

A new subcommand is a function ``_add_NAME(subparsers)`` that registers its
parser with ``set_defaults(handler=...)``, listed in ``_SUBCOMMANDS``; a new
top-level option goes into ``_build_parser`` beside ``--cmake-dir``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def cmake_dir() -> str:
    """Folder of the installed ``relaxcatConfig.cmake``.

    Imports the package lazily so that the path is found without the compiled
    module being loaded for anything else.
    """
    import relaxcat

    package = os.path.dirname(relaxcat.__file__)
    return os.path.join(package, "share", "cmake", "relaxcat")


def _run_demo(args: argparse.Namespace) -> int:
    # Imported here so that ``--cmake-dir`` and ``--help`` stay fast.
    from relaxcat import demo

    return demo.main(args=args)


def _add_demo(subparsers) -> None:
    from relaxcat import demo

    parser = subparsers.add_parser(
        "demo",
        help="train a categorical VAE on scikit-learn's digits",
        description=(demo.__doc__ or "").splitlines()[0],
    )
    demo.add_arguments(parser)
    parser.set_defaults(handler=_run_demo)


_SUBCOMMANDS = (_add_demo,)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m relaxcat",
        description="Tools that ship with relaxcat.",
    )
    parser.add_argument(
        "--cmake-dir",
        action="store_true",
        help="print the folder of relaxcat's CMake package configuration and exit",
    )
    subparsers = parser.add_subparsers(title="subcommands", metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run; returns the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if args.cmake_dir and handler is not None:
        # "--cmake-dir demo --epochs 0" had printed the folder and ignored the
        # rest (a second look at a fifth fresh-user review).
        parser.error("--cmake-dir takes no subcommand")
    if args.cmake_dir:
        print(cmake_dir())
        return 0
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
