"""Importing alpaca-eval in the AlpacaFarm setting, without its side effects on this process.

alpaca-eval reads `IS_ALPACA_EVAL_2` at import, imports `pkg_resources` (gone from setuptools >= 82), sets the root
logger to INFO, logs three warnings per unparsable answer and draws a progress bar per annotate call. Each is
undone or stood in for here, once, so the judge's own progress lines and counts are what a user reads.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
import sys
import types
import warnings
from pathlib import Path


def import_alpaca_eval() -> types.ModuleType:
    """alpaca-eval with its annotators and utils loaded (the AlpacaFarm / davinci-003 defaults)."""
    if "alpaca_eval" not in sys.modules:
        os.environ["IS_ALPACA_EVAL_2"] = "False"  # read at import: the AlpacaFarm / davinci-003 defaults
    _provide_pkg_resources()
    root = logging.getLogger()
    level = root.level
    try:
        import alpaca_eval
        import alpaca_eval.annotators
        import alpaca_eval.utils
    finally:
        root.setLevel(level)  # alpaca_eval.annotators.base sets the root logger to INFO at import
    if not any(isinstance(f, _AlpacaEvalWarnings) for f in root.filters):
        root.addFilter(_AlpacaEvalWarnings(Path(alpaca_eval.__file__).parent))
        # its one progress bar (per annotate call) would interleave with the judge's own progress lines
        alpaca_eval.utils.tqdm = types.SimpleNamespace(tqdm=functools.partial(_tqdm().tqdm, disable=True))
    return alpaca_eval


def _provide_pkg_resources() -> None:
    """`pkg_resources` for `alpaca_eval.utils`: setuptools' own, else a stand-in module with the two functions
    alpaca-eval uses of it (setuptools >= 82 removed it)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "pkg_resources is deprecated as an API"
            import pkg_resources  # noqa: F401
    except ImportError:
        from packaging.version import parse as parse_version

        shim = types.ModuleType("pkg_resources")
        shim.parse_version = parse_version
        shim.get_distribution = lambda name: types.SimpleNamespace(version=importlib.metadata.version(name))
        sys.modules["pkg_resources"] = shim


def _tqdm() -> types.ModuleType:
    import tqdm

    return tqdm


class _AlpacaEvalWarnings(logging.Filter):
    """Drops alpaca-eval's warnings on the root logger (three lines per unparsable answer, which
    `evals.judge_monitor` counts and reports instead); its errors still show."""

    def __init__(self, package_dir: Path) -> None:
        super().__init__()
        self.package_dir = str(package_dir)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not record.pathname.startswith(self.package_dir)
