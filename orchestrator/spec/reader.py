"""Reading a parsed YAML document field by field: a value of the wrong type, shape or size is a `SpecError` that
names the file and the field's path (`sources.seeds[2]`)."""

from __future__ import annotations

import math
from typing import Any

from orchestrator.spec.model import SpecError
from pdiff.checks import short

__all__ = ["Reader", "label"]


def label(key: Any) -> str:
    """A mapping key as a field path shows it: as written when it is a plain name, else its repr, cut short."""
    text = key if isinstance(key, str) and key.isprintable() and key.strip() == key and key else repr(key)
    return text if len(text) <= 60 else text[:60] + "..."


class Reader:
    """Walks a YAML mapping, recording where it is so errors can name the field."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, path: str, message: str):
        raise SpecError(self.source, path, message)

    def mapping(self, value: Any, path: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
        if not isinstance(value, dict):
            self.fail(path or "<file>", f"expected a mapping, got {type(value).__name__}")
        for key in value:
            if key not in allowed:
                where = label(key)
                self.fail(f"{path}.{where}" if path else where, f"unknown key; expected one of: {', '.join(allowed)}")
        for key in required:
            if key not in value:
                self.fail(f"{path}.{key}" if path else key, "required field is missing")
        return value

    def typed(self, value: Any, path: str, kind: type | tuple, what: str, *, positive: bool = False,
              minimum: float | None = None, maximum: float | None = None):
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            self.fail(path, f"expected {what}, got a boolean")
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:
                self.fail(path, f"expected {what}, got an integer too large for a number ({short(value)})")
        if not isinstance(value, kind):
            self.fail(path, f"expected {what}, got {short(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(path, f"expected a finite number, got {value!r}")
        if positive and not value > 0:
            self.fail(path, f"expected {what} > 0, got {short(value)}")
        if minimum is not None and value < minimum:
            self.fail(path, f"expected {what} >= {minimum}, got {short(value)}")
        if maximum is not None and value > maximum:
            self.fail(path, f"{short(value)} is above the maximum of {maximum}")
        return value

    def names(self, value: Any, path: str, known: tuple[str, ...] | None, what: str) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            self.fail(path, f"expected a non-empty list of {what}")
        for i, item in enumerate(value):
            if not isinstance(item, str) or (known is not None and item not in known):
                self.fail(f"{path}[{i}]", f"unknown {what[:-1]} {short(item)}; known: {', '.join(known or ())}")
        if len(set(value)) != len(value):
            self.fail(path, f"duplicate {what}")
        return tuple(value)
