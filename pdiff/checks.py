"""Field checks for the config dataclasses' `__post_init__`: a bad value raises `ConfigError`
(a ValueError) whose message names the field, `lr: expected a positive number (> 0), got -1`.

The library is safe without the orchestrator: `TrainConfig(lr=-1)` fails here, not epochs
later. The orchestrator's spec parser maps YAML onto these dataclasses and turns a
ConfigError into `FILE: sources.train.lr: ...` with `err.field` / `err.index`; the sweep
tool's own size maxima (sanity bounds such as k <= 100000) stay there.

Integers are `numbers.Integral` (not bool); numbers are `numbers.Real` (ints included, not
bool) and must be finite. Values are checked, never converted.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["ConfigError", "short", "integer", "number", "choice", "flag", "channels"]


class ConfigError(ValueError):
    """A config field holding a value it cannot take: `field: message`, or `field[index]: message`
    for one entry of a list field (`channels[1]`); field "" for two fields that do not fit together."""

    def __init__(self, field: str, message: str, index: int | None = None):
        self.field, self.message, self.index = field, message, index
        where = field if index is None else f"{field}[{index}]"
        super().__init__(f"{where}: {message}" if where else message)


def short(value: Any, limit: int = 60) -> str:
    """repr of a value, cut short so a message stays one readable line (str() of an int fails past 4300 digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**50:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def integer(cfg: Any, name: str, *, positive: bool = True, optional: bool = False) -> None:
    """`cfg.name` is an integer (> 0 unless positive=False, then >= 0); None too when optional."""
    value = getattr(cfg, name)
    if optional and value is None:
        return
    what = "an integer or None" if optional else "an integer"
    if not _is_int(value):
        raise ConfigError(name, f"expected {what}, got {short(value)}")
    if positive and not value > 0:
        raise ConfigError(name, f"expected a positive integer (> 0){' or None' if optional else ''}, "
                                f"got {short(value)}")
    if not positive and value < 0:
        raise ConfigError(name, f"expected an integer >= 0, got {short(value)}")


def number(cfg: Any, name: str, *, low: float = 0.0, low_open: bool = False, high: float | None = None,
           high_open: bool = False) -> None:
    """`cfg.name` is a finite number in [low, high] (an open end with low_open / high_open)."""
    value = getattr(cfg, name)
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise ConfigError(name, f"expected a number, got {short(value)}")
    try:
        finite = math.isfinite(float(value))
    except OverflowError:  # an int beyond float range
        finite = False
    if not finite:
        raise ConfigError(name, f"expected a finite number, got {short(value)}")
    if high is None:
        if low_open and not value > low:
            raise ConfigError(name, f"expected a positive number (> {low:g}), got {short(value)}")
        if not low_open and value < low:
            raise ConfigError(name, f"expected a number >= {low:g}, got {short(value)}")
        return
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (above and below):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ConfigError(name, f"expected a number in {interval}, got {short(value)}")


def choice(cfg: Any, name: str, allowed: tuple[str, ...]) -> None:
    value = getattr(cfg, name)
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(name, f"expected one of {', '.join(allowed)}, got {short(value)}")


def flag(cfg: Any, name: str) -> None:
    value = getattr(cfg, name)
    if not isinstance(value, bool):
        raise ConfigError(name, f"expected true or false, got {short(value)}")


def channels(cfg: Any, name: str) -> None:
    """A non-empty list (or tuple) of positive integer channel counts, one stage each."""
    value = getattr(cfg, name)
    if not isinstance(value, (tuple, list)):
        raise ConfigError(name, f"expected a list of channel counts, got {short(value)}")
    if not value:
        raise ConfigError(name, "expected a list of channel counts with at least one stage, got none")
    for i, c in enumerate(value):
        if not _is_int(c) or not c > 0:
            raise ConfigError(name, f"expected a channel count, a positive integer, got {short(c)}", index=i)
