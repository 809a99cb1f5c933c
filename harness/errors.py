"""The command line's error boundary: which exceptions are expected failures, and their one-line message.

Expected: `UserError` (raised where the input is checked), and the errors a bad file or folder raises
(ValueError, OSError, non-UTF-8 text, YAML and JSON syntax, damaged safetensors, refused pickles). Everything
else is a bug and keeps its traceback. No torch here: the CLI imports this before any model code.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import re
import sys
from collections.abc import Callable
from pathlib import Path

from trainers.errors import UserError
from trainers.io import parse_json, parse_yaml, read_utf8

__all__ = ["UserError", "check_config_file", "check_preset_name", "describe", "finite_float", "float_in", "int_in",
           "positive_int", "preset_name", "redact_urls", "run_guarded"]
PRESET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/\s@?#]*@)?(?P<rest>[^\s?#]*)"
                             r"(?P<query>\?[^\s#]*)?")


def redact_urls(text: str) -> str:
    """`text` with every URL's user-info dropped and its query values as `***`: fit to print and store (a command
    line in a run's manifest, for one)."""
    def clean(m: re.Match) -> str:
        query = m["query"] or ""
        if query:
            query = "?" + "&".join(p.split("=", 1)[0] + ("=***" if "=" in p else "") for p in query[1:].split("&"))
        return m["scheme"] + m["rest"] + query

    return URL_CREDENTIALS.sub(clean, text)


def check_preset_name(name: object, where: str = "preset") -> str:
    """A preset name becomes a folder name of the report: letters, digits, '_', '-', '.'; never '..' or a path."""
    if not isinstance(name, str) or not PRESET_NAME.fullmatch(name) or ".." in name:
        raise UserError(f"{where}={name!r} is not a valid preset name: use 1-64 letters, digits, '_', '-' or '.', "
                        "starting with a letter or digit (no '..', no '/')")
    return name


def _expected_types() -> tuple[type, ...]:
    found: list[type] = [ValueError, OSError, pickle.UnpicklingError]
    try:
        import yaml

        found.append(yaml.YAMLError)
    except ImportError:
        pass
    try:
        from safetensors import SafetensorError

        found.append(SafetensorError)
    except ImportError:
        pass
    return tuple(found)


def describe(exc: BaseException) -> str | None:
    """One line for an expected failure; None for a bug (whose traceback must show)."""
    if not isinstance(exc, _expected_types()):
        return None
    if isinstance(exc, UnicodeDecodeError):
        text = f"text is not UTF-8 ({exc.reason} at byte {exc.start})"
    elif isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def check_config_file(path: str | None) -> None:
    """A --config file that exists, is UTF-8 and parses (YAML or JSON), or a UserError naming it."""
    if path is None:
        return
    file = Path(path)
    text = read_utf8(file, f"--config {path!r}")
    if file.suffix in (".yaml", ".yml"):
        import yaml

        try:
            parse_yaml(text)
        except yaml.YAMLError as e:
            raise UserError(f"--config {path!r} is not valid YAML ({describe(e)})") from None
    else:
        try:
            parse_json(text)
        except ValueError as e:
            raise UserError(f"--config {path!r} is not valid JSON ({e})") from None


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1 (leave the option out for the default)")
    return value


def int_in(low: int, high: int) -> Callable[[str], int]:
    """argparse type: an integer in [low, high]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer; allowed: {low}..{high}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range; allowed: {low}..{high}")
        return value

    parse.__name__ = "integer"
    return parse


def float_in(low: float, high: float, *, low_open: bool = False) -> Callable[[str], float]:
    """argparse type: a finite number in [low, high] ((low, high] with `low_open`)."""
    allowed = f"{'(' if low_open else '['}{low:g}, {high:g}]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; allowed: {allowed}") from None
        if not math.isfinite(value) or not (low < value if low_open else low <= value) or value > high:
            raise argparse.ArgumentTypeError(f"{text} is out of range; allowed: {allowed}")
        return value

    parse.__name__ = "number"
    return parse


def finite_float(text: str) -> float:
    """argparse type: any finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number")
    return value


def preset_name(text: str) -> str:
    """argparse type: a preset name that is safe as a folder name of the report."""
    try:
        return check_preset_name(text, "--preset")
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None

# evals.judging.JudgeError by name: importing it here would pull the judges into every command
JUDGE_FAILURE = "JudgeError"


def run_guarded(work: Callable[[], int], debug: bool = False) -> int:
    """`work()`'s exit status; an expected failure instead as one line on stderr and status 2 (3: the judge could
    not answer). A bug, or any failure with `debug`, keeps its traceback."""
    try:
        return work()
    except Exception as e:
        if type(e).__name__ == JUDGE_FAILURE and not debug:
            print(f"harness: error: the judge could not answer: {e}", file=sys.stderr)
            return 3
        message = describe(e)
        if message is None or debug:
            raise
        print(f"harness: error: {message}", file=sys.stderr)
        return 2
