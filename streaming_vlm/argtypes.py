"""Argument types shared by the command-line entry points: numbers checked at parse time, one-line errors."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Sequence


def positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def finite_float(text: str) -> float:
    """Any real number; ``nan`` and ``inf`` are not (a flag that means no limit has its own word for it)."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


UNLIMITED_WORDS = ("unlimited", "none", "inf")
"""Words (any case) that mean "no limit" where a count is expected; ``None`` in code."""


def count_or_unlimited(text: str) -> int | None:
    """An integer >= 0, or ``unlimited`` (also ``none``, ``inf``) for no limit, returned as ``None``."""
    if text.lower() in UNLIMITED_WORDS:
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0 or 'unlimited', got {text!r}")
    return value


def csv_choices(
    choices: Sequence[str], *, what: str = "values", ignore_case: bool = False
) -> Callable[[str], list[str]]:
    """An argument type for a comma-separated subset of ``choices`` (e.g. ``--modes streaming,full``).

    The returned function gives the named choices in the order written, each once; blanks around commas are
    ignored. With ``ignore_case`` a name matches whatever its case and comes back spelled as in ``choices``. An
    empty list or an unknown name is an ``ArgumentTypeError`` naming ``what``, every choice and the text.
    """
    canonical = {(c.lower() if ignore_case else c): c for c in choices}

    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        picked = [canonical.get(n.lower() if ignore_case else n) for n in names]
        if None in picked or not names:
            raise argparse.ArgumentTypeError(f"{what} must be a comma-separated subset of {','.join(choices)}, "
                                             f"got {text!r}")
        return list(dict.fromkeys(picked))

    return parse


def env_seconds(name: str, default: float) -> float:
    """Seconds from the environment variable ``name`` (unset or blank: ``default``); anything but a positive finite
    number is a one-line ``ValueError`` naming the variable."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number of seconds, got {text!r}")
    return value
