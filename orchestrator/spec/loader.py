"""A sweep spec file as YAML: the checks of the file itself, and a loader that refuses aliases and keys written
twice. Every problem is a `SpecError` in one line, with its line and column where YAML has them."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import yaml

from orchestrator.spec.model import SpecError
from orchestrator.spec.reader import label

__all__ = ["read_yaml", "MAX_SPEC_BYTES"]

MAX_SPEC_BYTES = 1 << 20


def _file_bytes(path: Path, source: str) -> bytes:
    """The file's bytes, once it is known to be a regular file of at most MAX_SPEC_BYTES."""
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise SpecError(source, "<file>", "no such file") from None
    except (OSError, ValueError) as err:  # permissions, a name with a NUL byte, ...
        raise SpecError(source, "<file>", f"cannot read it ({getattr(err, 'strerror', None) or err})") from None
    if stat.S_ISDIR(info.st_mode):
        raise SpecError(source, "<file>", "is a directory, not a sweep YAML file")
    if not stat.S_ISREG(info.st_mode):
        raise SpecError(source, "<file>", "not a regular file (a sweep spec is a YAML file)")
    if info.st_size > MAX_SPEC_BYTES:
        raise SpecError(source, "<file>", f"{info.st_size} bytes; a sweep spec is at most {MAX_SPEC_BYTES} bytes")
    try:
        return path.read_bytes()
    except OSError as err:
        raise SpecError(source, "<file>", f"cannot read it ({err.strerror or err})") from None


def read_yaml(path: Path) -> Any:
    """The YAML document of a sweep spec file, as Python values (errors name the file as `str(path)`)."""
    source = str(path)
    data = _file_bytes(path, source)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SpecError(source, "<file>", f"not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); "
                                          f"save the spec as UTF-8") from None
    try:
        return yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader that also refuses aliases
    except _Refused as err:
        raise SpecError(source, err.path or "<file>", str(err)) from None
    except yaml.YAMLError as err:
        raise SpecError(source, "<file>", f"not valid YAML {_yaml_problem(err, text)}") from None
    except RecursionError:
        raise SpecError(source, "<file>", "nested too deeply to be a sweep spec") from None


def _at(mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def _yaml_problem(err: yaml.YAMLError, text: str) -> str:
    """`at line 2, column 35: expected ',' or ']', but got ':' (while parsing ... at line 2, column 17)`: one
    line, where PyYAML prints a multi-line dump of the text."""
    def flat(words) -> str:
        return " ".join(str(words).split())[:200]

    if isinstance(err, yaml.reader.ReaderError):  # a character YAML does not allow (NUL, a control character)
        before = text[:err.position]
        where = f"line {before.count(chr(10)) + 1}, column {err.position - before.rfind(chr(10))}"
        return f"at {where}: unacceptable character #x{err.character:04x}: {flat(err.reason)}"  # text: a code point
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        context = f" ({flat(err.context)} at {_at(err.context_mark)})" if err.context and err.context_mark else ""
        return f"at {_at(err.problem_mark)}: {flat(err.problem)}{context}"
    return f"({flat(err)})"


class _Refused(yaml.YAMLError):
    """A document refused while it is composed, at a field path: an alias, a key written twice."""

    def __init__(self, path: str, message: str):
        self.path = path
        super().__init__(message)


class _SpecLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses aliases (`*name`, hence `<<:` merges: a few lines of aliases can
    expand to gigabytes) and keys written twice in one mapping (PyYAML keeps the last one silently).
    It tracks the field path so the error can name it; a value its constructors reject (a date
    2024-02-30, a 5000-digit integer) is a YAML error at that value's line and column."""

    def __init__(self, stream):
        super().__init__(stream)
        self._at: list[Any] = []

    def _dotted(self, at: list[Any]) -> str:
        out = ""
        for index in at:
            if isinstance(index, int):
                out += f"[{index}]"
            elif isinstance(index, yaml.ScalarNode):
                out += f".{label(index.value)}" if out else label(index.value)
        return out

    def compose_node(self, parent, index):
        self._at.append(index)
        try:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise _Refused(self._dotted(self._at), f"YAML aliases are not allowed (*{event.anchor} at "
                                                       f"{_at(event.start_mark)}): write the value out in full")
            node = super().compose_node(parent, index)
            if isinstance(node, yaml.MappingNode):
                self._refuse_duplicates(node)
            return node
        finally:
            self._at.pop()

    def _refuse_duplicates(self, node: yaml.MappingNode) -> None:
        seen: dict[tuple[str, str], yaml.ScalarNode] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode):
                continue
            first = seen.setdefault((key.tag, key.value), key)
            if first is not key:
                a, b = first.start_mark, key.start_mark
                where = (f"lines {a.line + 1} and {b.line + 1}" if a.line != b.line else
                         f"line {a.line + 1}, columns {a.column + 1} and {b.column + 1}")
                raise _Refused(self._dotted([*self._at, key]), f"duplicate key ({where})")

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as err:
            raise yaml.constructor.ConstructorError(None, None, str(err), node.start_mark) from None
