"""Sweep YAML -> a typed, validated `SweepSpec`. Every error names the file and the field.

    name: smoke
    storage: results                  # local folder or any pyarrow URI (s3://bucket/prefix)
    seed: 0
    sources:
      archs: [cnn_small, mlp]
      datasets: [digits]
      seeds: [0, 1]
      train: {epochs: 15, batch_size: 64, lr: 0.05}
      subset: {cnn_small: ["bn2.*", "fc.*"]}     # optional; default pdiff.DEFAULT_SUBSET
      collect: {k: 50, interval: 2, unit: step, lr: 0.01}
      max_failures: 5                 # restarts of a cell's Ray Train run (a lost spot node); it resumes
      max_acc_drop: 5                 # points the snapshots' mean val acc may fall below the source's (pdiff.health)
    pdiff:
      knobs:                          # a value is fixed; a mapping with `type` is searched
        latent_dim: {type: choice, values: [32, 64]}
        latent_noise: {type: loguniform, low: 0.01, high: 0.5}
        ae_steps: 5000                # a bound: the AE stops once its reconstructions reach ae_min_r2
        ae_min_r2: 0.95               # share of the snapshots' variance the AE must reconstruct
        normalize: global             # global (per-coordinate centre, one scale) | tensor (per-tensor)
        sampler: ddim
      objective: [accuracy]           # best val acc of the N models; mean_accuracy: their mean (more resolution);
                                      # either may be followed by novelty for a multi-objective search
      num_samples: 4                  # with no searched knob: repeats of the fixed configuration
      max_concurrent: 2
      search: tpe                     # tpe | random | grid (all searched knobs choices)
      early_stopping: {grace_period: 2}   # ASHA on intermediate val accuracy; omit for none
      baselines: true
      noise_sigma: 0.01
    resources:
      sources: {cpus: 1, gpus: 0, workers: 1}
      trials: {cpus: 1, gpus: 0}

Rules beyond the types:

- Values are checked by the dataclasses they fill, in their `__post_init__` (pdiff's TrainConfig,
  CollectConfig, AEConfig, LDMConfig, PdiffConfig; Resources, Distribution and SweepSpec here):
  a `pdiff.checks.ConfigError` naming the field becomes a SpecError at its path in the file. This
  module maps YAML to Python types and checks the sweep tool's own size maxima (below).
- `name` is a slug: ASCII letters, digits, '-', '_' and '.', starting with a
  letter or a digit, at most 128 characters. It names the sweep's folder
  `<storage>/<name>`, so it can never be '.', '..' or hold a separator.
- The file is UTF-8 YAML of at most 1 MB. YAML aliases (`*anchor`, and so `<<:`
  merges) are refused: a few aliases can expand to gigabytes (an alias bomb). So is a
  key written twice in one mapping (YAML would keep the last one silently), naming both
  lines; a syntax error is one line with its line and column.
- Numbers are finite, and every number has a documented maximum (larger values
  are typos or runs of weeks; a message names the field and its maximum):

      sources.train.epochs <= 10000        sources.train.batch_size <= 1000000
      sources.collect.k <= 100000          sources.collect.interval <= 1000000
      sources.max_failures <= 1000
      seed, sources.seeds[i] <= 2147483647  (at most 10000 seeds)
      pdiff.knobs.n_generated <= 100000    pdiff.knobs.latent_dim <= 65536
      pdiff.knobs.ae_steps, ldm_steps <= 1000000
      pdiff.knobs.ae_batch_size, ldm_batch_size <= 1000000
      pdiff.knobs.sample_steps <= 100000   pdiff.knobs.ae_token_size <= 65536
      pdiff.knobs.ae_channels, ldm_channels: 1 to 16 entries, each 1..65536
      pdiff.num_samples <= 10000           pdiff.max_concurrent <= 10000
      pdiff.early_stopping.grace_period <= 1000000
      resources.*.cpus <= 100000, gpus <= 10000, workers <= 10000
      learning rates, weight decay and noise stds <= 1000 (sources.train.lr, weight_decay,
      sources.collect.lr, pdiff.knobs.ae_lr, ldm_lr, input_noise, latent_noise, pdiff.noise_sigma)
      pdiff.knobs.ae_min_r2, ae_min_fidelity, ema_decay <= 1, sources.max_acc_drop <= 100 (checked by
      their dataclasses)
- Each subset pattern must match a parameter of its architecture, as built for each dataset
  of the sweep (on torch's meta device: no memory, no weights), so a typo fails here, not in
  stage 1 on Ray.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import re
import stat
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from orchestrator.store.paths import is_sweep_name
from pdiff import (ARCHS, DATASETS, DEFAULT_SUBSET, CollectConfig, ParameterSubset, PdiffConfig, TrainConfig,
                   build_model, checks)
from pdiff.checks import ConfigError
from pdiff.data import DATASET_SHAPES
from pdiff.health import MAX_ACC_DROP
from pdiff.pipeline import KNOBS

__all__ = ["SpecError", "Distribution", "Cell", "SweepSpec", "load_spec", "parse_spec", "is_sweep_name",
           "is_placeholder_storage", "MAXIMA"]

DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
OBJECTIVES = ("accuracy", "mean_accuracy", "novelty")
SEARCHES = ("tpe", "random", "grid")  # Optuna samplers (NSGA-II replaces TPE for two objectives)

PLACEHOLDER_BUCKET = re.compile(r"(my|your|example)([-_.].*)?|bucket", re.IGNORECASE)
MAX_SPEC_BYTES = 1 << 20
MAX_SEED = 2**31 - 1  # seeds are summed with trial counters and must stay below numpy's 2**32
# The documented maxima of sizes (see the module docstring), by field path or knob name.
MAXIMA: dict[str, int] = {
    "sources.train.epochs": 10_000, "sources.train.batch_size": 1_000_000,
    "sources.collect.k": 100_000, "sources.collect.interval": 1_000_000, "sources.max_failures": 1_000,
    "n_generated": 100_000, "latent_dim": 65_536, "ae_steps": 1_000_000, "ldm_steps": 1_000_000,
    "ae_batch_size": 1_000_000, "ldm_batch_size": 1_000_000, "sample_steps": 100_000,
    "channels": 65_536, "channel_stages": 16,
    "pdiff.num_samples": 10_000, "pdiff.max_concurrent": 10_000, "pdiff.early_stopping.grace_period": 1_000_000,
    "seeds": 10_000, "cpus": 100_000, "gpus": 10_000, "workers": 10_000, "ae_token_size": 65_536,
    "sources.train.lr": 1_000, "sources.train.weight_decay": 1_000, "sources.collect.lr": 1_000,
    "ae_lr": 1_000, "ldm_lr": 1_000, "input_noise": 1_000, "latent_noise": 1_000, "pdiff.noise_sigma": 1_000,
}


def is_placeholder_storage(storage: str) -> bool:
    """A bucket URI of the kind shipped specs and docs write for "yours here" (`s3://my-pdiff-bucket/...`,
    `s3://bucket/prefix`): a run needs `--storage` with a real one."""
    scheme, sep, rest = storage.partition("://")
    return bool(sep) and PLACEHOLDER_BUCKET.fullmatch(rest.split("/")[0].split("?")[0]) is not None


class SpecError(ValueError):
    """A sweep spec that cannot run: `FILE: path.to.field: what was expected`."""

    def __init__(self, source: str, path: str, message: str):
        self.source, self.path, self.message = source, path, message
        super().__init__(f"{source}: {path}: {message}")


@dataclass(frozen=True)
class Distribution:
    """One searched knob, in Optuna's terms."""

    type: str  # uniform | loguniform | int | choice
    low: float | int | None = None
    high: float | int | None = None
    values: tuple[Any, ...] = ()
    log: bool = False  # for int

    def __post_init__(self):  # a bad value raises pdiff.checks.ConfigError naming the field
        checks.choice(self, "type", DISTRIBUTIONS)
        if self.type == "choice":
            if not self.values:
                raise ConfigError("values", "expected a non-empty list")
            for i, v in enumerate(self.values):
                if not isinstance(v, (int, float, str, bool)) and v is not None:
                    raise ConfigError("values", f"expected a number or a string (Optuna choices), got {_short(v)}", i)
            return
        for bound in ("low", "high"):
            value = getattr(self, bound)
            if self.type != "int":
                checks.number(self, bound, low=-math.inf)  # finite
            elif isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(bound, f"expected an integer, got {_short(value)}")
        checks.flag(self, "log")
        if not self.low < self.high:
            raise ConfigError("", f"impossible range: low ({self.low}) must be below high ({self.high})")
        if (self.type == "loguniform" or self.log) and self.low <= 0:
            raise ConfigError("low", f"a log-scaled range needs low > 0, got {self.low}")

    def describe(self) -> str:
        """The distribution in full, for the plan: `loguniform[0.0001, 0.01]`, `int[10000, 30000] (log scale)`."""
        if self.type == "choice":
            return f"choice{list(self.values)}"
        return f"{self.type}[{self.low}, {self.high}]" + (" (log scale)" if self.log else "")

    def to_optuna(self):
        import optuna.distributions as od

        if self.type == "choice":
            return od.CategoricalDistribution(list(self.values))
        if self.type == "int":
            return od.IntDistribution(int(self.low), int(self.high), log=self.log)
        return od.FloatDistribution(float(self.low), float(self.high), log=self.type == "loguniform")


@dataclass(frozen=True)
class Resources:
    cpus: float = 1.0
    gpus: float = 0.0
    workers: int = 1

    def __post_init__(self):  # a bad value raises pdiff.checks.ConfigError naming the field
        checks.number(self, "cpus", low_open=True)
        checks.number(self, "gpus")
        if self.gpus > 1 and self.gpus != int(self.gpus):
            raise ConfigError("gpus", f"a fractional GPU request must be below 1, got {self.gpus}")
        checks.integer(self, "workers")


@dataclass(frozen=True)
class Cell:
    """One source model: (arch, dataset, seed) with its training knobs. Its id is its content."""

    arch: str
    dataset: str
    seed: int
    subset: tuple[str, ...]
    train: TrainConfig
    collect: CollectConfig

    @property
    def cell_id(self) -> str:
        collect = dataclasses.asdict(self.collect)
        if collect["batchnorm"] == "eval":  # the collection before the field existed: those cells keep their ids
            del collect["batchnorm"]
        content = json.dumps([self.arch, self.dataset, self.seed, self.subset,
                              dataclasses.asdict(self.train), collect], sort_keys=True)
        return f"{self.arch}-{self.dataset}-s{self.seed}-{hashlib.sha256(content.encode()).hexdigest()[:8]}"


def _check_name(spec: Any, name: str) -> None:
    if not is_sweep_name(getattr(spec, name)):
        raise ConfigError(name, f"expected a slug of letters, digits, '-', '_' or '.' that starts with a letter "
                                f"or a digit, at most 128 characters (it names the sweep's folder), "
                                f"got {_short(getattr(spec, name))}")


def _check_storage(spec: Any, name: str) -> None:
    value = getattr(spec, name)
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise ConfigError(name, f"expected a folder or a URI such as s3://bucket/prefix, got {_short(value)}")


# SweepSpec's field checks, `check(spec, field)`: run by its __post_init__, and by parse_spec as it
# reads each field (so that the first error in the file's order is the one reported).
_SPEC_CHECKS = {
    "name": _check_name, "storage": _check_storage, "seed": partial(checks.integer, positive=False),
    "source_max_failures": partial(checks.integer, positive=False), "num_samples": checks.integer,
    "max_concurrent": checks.integer, "search_alg": partial(checks.choice, allowed=SEARCHES),
    "grace_period": partial(checks.integer, optional=True), "baselines": checks.flag,
    "noise_sigma": partial(checks.number, low_open=True),
    "max_acc_drop": partial(checks.number, high=100.0),
}


@dataclass(frozen=True)
class SweepSpec:
    name: str
    storage: str
    seed: int
    cells: tuple[Cell, ...]
    fixed: dict[str, Any]  # p-diff knobs held constant
    search: dict[str, Distribution]  # p-diff knobs searched
    objective: tuple[str, ...]
    num_samples: int
    max_concurrent: int
    search_alg: str  # tpe | random | grid
    grace_period: int | None  # ASHA early stopping, None = off
    baselines: bool
    noise_sigma: float
    source_resources: Resources
    trial_resources: Resources
    source_max_failures: int = 5  # Ray Train restarts per cell; each resumes from the last epoch
    max_acc_drop: float = MAX_ACC_DROP  # a collection whose snapshots fall further below the source fails
    source_file: str = "<spec>"
    raw: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):  # a bad value raises pdiff.checks.ConfigError naming the field
        for name, check in _SPEC_CHECKS.items():
            check(self, name)

    @property
    def spec_hash(self) -> str:
        """Hash of everything that defines the results (not where they are stored, nor how often cells restart)."""
        content = {k: v for k, v in self.raw.items() if k not in ("storage", "resources")}
        if isinstance(content.get("sources"), dict):
            content["sources"] = {k: v for k, v in content["sources"].items() if k != "max_failures"}
        return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:12]

    @property
    def search_hash(self) -> str:
        """Hash of the p-diff section: trials of a different search are not resumed."""
        return hashlib.sha256(json.dumps(self.raw.get("pdiff"), sort_keys=True, default=str).encode()).hexdigest()[:12]

    def pdiff_config(self, knobs: dict[str, Any]) -> PdiffConfig:
        return PdiffConfig.from_knobs(**(self.fixed | knobs))


def load_spec(path: str | Path, *, storage: str | None = None) -> SweepSpec:
    """Read and validate a sweep YAML file; `storage` overrides the file's."""
    path = Path(path)
    source = str(path)
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
        data = path.read_bytes()
    except OSError as err:
        raise SpecError(source, "<file>", f"cannot read it ({err.strerror or err})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SpecError(source, "<file>", f"not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); "
                                          f"save the spec as UTF-8") from None
    try:
        raw = yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader that also refuses aliases
    except _Refused as err:
        raise SpecError(source, err.path or "<file>", str(err)) from None
    except yaml.YAMLError as err:
        raise SpecError(source, "<file>", f"not valid YAML {_yaml_problem(err, text)}") from None
    except RecursionError:
        raise SpecError(source, "<file>", "nested too deeply to be a sweep spec") from None
    if storage is not None and isinstance(raw, dict):
        raw["storage"] = storage
    return parse_spec(raw, source)


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
                out += f".{_label(index.value)}" if out else _label(index.value)
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


def _label(key: Any) -> str:
    """A mapping key as a field path shows it: as written when it is a plain name, else its repr, cut short."""
    label = key if isinstance(key, str) and key.isprintable() and key.strip() == key and key else repr(key)
    return label if len(label) <= 60 else label[:60] + "..."


class _Reader:
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
                label = _label(key)
                self.fail(f"{path}.{label}" if path else label, f"unknown key; expected one of: {', '.join(allowed)}")
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
                self.fail(path, f"expected {what}, got an integer too large for a number ({_short(value)})")
        if not isinstance(value, kind):
            self.fail(path, f"expected {what}, got {_short(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(path, f"expected a finite number, got {value!r}")
        if positive and not value > 0:
            self.fail(path, f"expected {what} > 0, got {_short(value)}")
        if minimum is not None and value < minimum:
            self.fail(path, f"expected {what} >= {minimum}, got {_short(value)}")
        if maximum is not None and value > maximum:
            self.fail(path, f"{_short(value)} is above the maximum of {maximum}")
        return value

    def names(self, value: Any, path: str, known: tuple[str, ...] | None, what: str) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            self.fail(path, f"expected a non-empty list of {what}")
        for i, item in enumerate(value):
            if not isinstance(item, str) or (known is not None and item not in known):
                self.fail(f"{path}[{i}]", f"unknown {what[:-1]} {_short(item)}; known: {', '.join(known or ())}")
        if len(set(value)) != len(value):
            self.fail(path, f"duplicate {what}")
        return tuple(value)


def _short(value: Any, limit: int = 60) -> str:
    """repr of a value, cut short: a message must stay one readable line."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**50:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"  # str() fails past 4300
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _build(reader: _Reader, path: str, make, *args, **kwargs) -> Any:
    """`make(*args, **kwargs)`, a config dataclass whose __post_init__ checks the values: its
    ConfigError (`lr: ...`, `channels[1]: ...`) becomes a SpecError at `path.lr`, `path[1]`."""
    try:
        return make(*args, **kwargs)
    except ConfigError as err:
        where = f"{path}.{err.field}" if path and err.field else err.field or path
        reader.fail(where if err.index is None else f"{where}[{err.index}]", err.message)
    except (TypeError, ValueError) as err:
        reader.fail(path, str(err))


def _config(reader: _Reader, value: Any, path: str, cls: type) -> Any:
    """A config dataclass from a mapping: unknown keys are errors here, values are checked by the
    dataclass itself (TrainConfig, CollectConfig), and sizes against the sweep tool's MAXIMA here."""
    value = {} if value is None else value
    fields = tuple(f.name for f in dataclasses.fields(cls))
    reader.mapping(value, path, fields)
    cfg = _build(reader, path, cls, **value)
    for key in fields:
        maximum = MAXIMA.get(f"{path}.{key}")
        if maximum is not None and getattr(cfg, key) > maximum:
            reader.fail(f"{path}.{key}", f"{_short(getattr(cfg, key))} is above the maximum of {maximum}")
    return cfg


def _distribution(r: _Reader, value: dict, path: str) -> Distribution:
    kind = value.get("type")
    if kind not in DISTRIBUTIONS:
        r.fail(f"{path}.type", f"expected one of {', '.join(DISTRIBUTIONS)}, got {_short(kind)}")
    if kind == "choice":
        r.mapping(value, path, ("type", "values"), ("values",))
        values = value["values"]
        if not isinstance(values, list):
            r.fail(f"{path}.values", "expected a non-empty list")
        return _build(r, path, Distribution, "choice", values=tuple(values))  # it checks the values
    r.mapping(value, path, ("type", "low", "high", "log") if kind == "int" else ("type", "low", "high"),
              ("low", "high"))
    num = int if kind == "int" else float
    what = "an integer" if kind == "int" else "a number"
    low = r.typed(value["low"], f"{path}.low", num, what)
    high = r.typed(value["high"], f"{path}.high", num, what)
    log = r.typed(value.get("log", False), f"{path}.log", bool, "true or false")
    return _build(r, path, Distribution, kind, low, high, log=log)  # it checks the range


def _check_knob_value(r: _Reader, name: str, value: Any, path: str) -> None:
    """Build a PdiffConfig with just this knob: the config dataclasses check the value (their
    ConfigError names the knob, `ae_channels[1]: ...`); the sweep tool's size maxima are checked here."""
    try:
        cfg = PdiffConfig.from_knobs(**{name: value})
    except ConfigError as err:  # from_knobs names the knob itself; the path is already the knob's
        r.fail(path if err.index is None else f"{path}[{err.index}]", err.message)
    except (TypeError, ValueError) as err:
        r.fail(path, str(err))
    got = cfg.knobs()[name]
    if name in MAXIMA and got is not None and got > MAXIMA[name]:
        r.fail(path, f"{_short(got)} is above the maximum of {MAXIMA[name]}")
    if name in ("ae_channels", "ldm_channels"):
        if len(got) > MAXIMA["channel_stages"]:
            r.fail(path, f"expected a list of 1 to {MAXIMA['channel_stages']} channel counts, got {len(got)}")
        for i, c in enumerate(got):
            if c > MAXIMA["channels"]:
                r.fail(f"{path}[{i}]", f"expected a channel count from 1 to {MAXIMA['channels']}, got {_short(c)}")


@functools.lru_cache(maxsize=None)
def _meta_model(arch: str, dataset: str) -> Any:
    """The architecture as built for the dataset, on torch's meta device: its parameter names and shapes,
    no memory and no weights (once per process: building a ResNet takes a fraction of a second)."""
    import torch

    channels, classes, image_size = DATASET_SHAPES[dataset]
    with torch.device("meta"):
        return build_model(arch, channels=channels, classes=classes, image_size=image_size)


def _check_patterns(r: _Reader, arch: str, dataset: str, patterns: tuple[str, ...]) -> None:
    """Each subset pattern matches a parameter of `arch` built for `dataset` (the rule of
    ParameterSubset.select, which stage 1 applies to the real model)."""
    model = _meta_model(arch, dataset)
    for i, pattern in enumerate(patterns):
        try:
            ParameterSubset.select(model, [pattern])
        except ValueError:
            names = [n for n, _ in model.named_parameters()]
            shown = ", ".join(names if len(names) <= 8 else [*names[:2], "...", *names[-6:]])
            r.fail(f"sources.subset.{arch}[{i}]", f"{_short(pattern)} matches no parameter of {arch} on {dataset} "
                                                  f"(its {len(names)} parameters: {shown})")


def _resources(r: _Reader, value: Any, path: str, workers: bool) -> Resources:
    value = {} if value is None else value
    r.mapping(value, path, ("cpus", "gpus", "workers") if workers else ("cpus", "gpus"))
    # YAML -> Python (an integer count of CPUs becomes a float) and the sizes' maxima; Resources checks the values.
    cpus = r.typed(value.get("cpus", 1.0), f"{path}.cpus", float, "a number", maximum=MAXIMA["cpus"])
    gpus = r.typed(value.get("gpus", 0.0), f"{path}.gpus", float, "a number", maximum=MAXIMA["gpus"])
    n = r.typed(value.get("workers", 1), f"{path}.workers", int, "an integer", maximum=MAXIMA["workers"])
    return _build(r, path, Resources, cpus, gpus, n)


# The field path in the YAML of each SweepSpec field a ConfigError can name (others: the field's name).
_SPEC_PATHS = {"num_samples": "pdiff.num_samples", "max_concurrent": "pdiff.max_concurrent",
               "search_alg": "pdiff.search", "grace_period": "pdiff.early_stopping.grace_period",
               "baselines": "pdiff.baselines", "noise_sigma": "pdiff.noise_sigma",
               "source_max_failures": "sources.max_failures", "max_acc_drop": "sources.max_acc_drop"}


def _spec_field(r: _Reader, name: str, value: Any) -> Any:
    """`value` for SweepSpec's field `name`, checked now with SweepSpec's own check of that field."""
    try:
        _SPEC_CHECKS[name](SimpleNamespace(**{name: value}), name)
    except ConfigError as err:
        r.fail(_SPEC_PATHS.get(name, name), err.message)
    return value


def _sweep_spec(**fields: Any) -> SweepSpec:
    try:
        return SweepSpec(**fields)
    except ConfigError as err:
        raise ConfigError(_SPEC_PATHS.get(err.field, err.field), err.message, err.index) from None


def parse_spec(raw: Any, source: str = "<spec>") -> SweepSpec:
    """Validate a parsed YAML document (see the module docstring for the format)."""
    r = _Reader(source)
    if raw is None:
        r.fail("<file>", "the file is empty")
    top = r.mapping(raw, "", ("name", "storage", "seed", "sources", "pdiff", "resources"),
                    ("name", "sources", "pdiff"))
    # Below, r.typed maps YAML to Python types and checks the sweep tool's maxima; the values
    # themselves are checked by the dataclasses (SweepSpec, Resources, Distribution, pdiff's configs).
    name = _spec_field(r, "name", r.typed(top["name"], "name", str, "a string"))
    storage = _spec_field(r, "storage", r.typed(top.get("storage", "results"), "storage", str,
                                                "a folder or a URI such as s3://bucket/prefix"))
    seed = _spec_field(r, "seed", r.typed(top.get("seed", 0), "seed", int, "an integer", maximum=MAX_SEED))

    src = r.mapping(top["sources"], "sources",
                    ("archs", "datasets", "seeds", "train", "subset", "collect", "max_failures", "max_acc_drop"),
                    ("archs", "datasets"))
    archs = r.names(src["archs"], "sources.archs", tuple(ARCHS), "architectures")
    datasets = r.names(src["datasets"], "sources.datasets", DATASETS, "datasets")
    seeds = src.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds:
        r.fail("sources.seeds", "expected a non-empty list of integers")
    if len(seeds) > MAXIMA["seeds"]:
        r.fail("sources.seeds", f"{len(seeds)} seeds, above the maximum of {MAXIMA['seeds']}")
    for i, s in enumerate(seeds):
        r.typed(s, f"sources.seeds[{i}]", int, "an integer", minimum=0, maximum=MAX_SEED)
    if len(set(seeds)) != len(seeds):
        r.fail("sources.seeds", "duplicate seeds")
    train = _config(r, src.get("train"), "sources.train", TrainConfig)
    collect = _config(r, src.get("collect"), "sources.collect", CollectConfig)
    subsets = r.mapping(src.get("subset") or {}, "sources.subset", tuple(ARCHS))
    for arch, patterns in subsets.items():
        patterns = r.names(patterns, f"sources.subset.{arch}", None, "patterns")
        for dataset in datasets:
            _check_patterns(r, arch, dataset, patterns)
    max_failures = _spec_field(r, "source_max_failures", r.typed(
        src.get("max_failures", 5), "sources.max_failures", int, "an integer", maximum=MAXIMA["sources.max_failures"]))
    max_acc_drop = _spec_field(r, "max_acc_drop", r.typed(
        src.get("max_acc_drop", MAX_ACC_DROP), "sources.max_acc_drop", float, "a number of percentage points"))
    cells = tuple(
        Cell(arch, dataset, seed_, tuple(subsets.get(arch, DEFAULT_SUBSET[arch])), train, collect)
        for arch in archs for dataset in datasets for seed_ in seeds
    )

    pd = r.mapping(top["pdiff"], "pdiff", ("knobs", "objective", "num_samples", "max_concurrent", "search",
                                            "early_stopping", "baselines", "noise_sigma"))
    knobs = r.mapping(pd.get("knobs") or {}, "pdiff.knobs", tuple(KNOBS))
    fixed, search = {}, {}
    for knob, value in knobs.items():
        path = f"pdiff.knobs.{knob}"
        if isinstance(value, dict):
            dist = _distribution(r, value, path)
            for probe in ((dist.low, dist.high) if dist.type != "choice" else dist.values):
                _check_knob_value(r, knob, probe, path)
            search[knob] = dist
        else:
            _check_knob_value(r, knob, value, path)
            fixed[knob] = value
    objective = pd.get("objective", ["accuracy"])
    objective = r.names(objective, "pdiff.objective", OBJECTIVES, "objectives")
    if objective[0] not in ("accuracy", "mean_accuracy") or "accuracy" in objective[1:] or "mean_accuracy" in objective[1:]:
        r.fail("pdiff.objective", "the first objective must be accuracy or mean_accuracy (novelty may follow)")
    num_samples = _spec_field(r, "num_samples", r.typed(
        pd.get("num_samples", 4), "pdiff.num_samples", int, "an integer", maximum=MAXIMA["pdiff.num_samples"]))
    max_concurrent = _spec_field(r, "max_concurrent", r.typed(
        pd.get("max_concurrent", 2), "pdiff.max_concurrent", int, "an integer", maximum=MAXIMA["pdiff.max_concurrent"]))
    search_alg = _spec_field(r, "search_alg", pd.get("search", "tpe"))
    if search_alg == "grid":
        not_choice = [k for k, d in search.items() if d.type != "choice"]
        if not_choice:
            r.fail("pdiff.search", f"a grid needs every searched knob to be a choice; not: {', '.join(not_choice)}")
        size = 1
        for d in search.values():
            size *= len(d.values)
        # With every knob fixed there is no grid to exhaust: num_samples are repeats of the one
        # configuration (each its own trial index and seed), as for any other search.
        if search and num_samples > size:
            r.fail("pdiff.num_samples", f"the grid has {size} points, fewer than num_samples ({num_samples})")
    grace = None
    if pd.get("early_stopping") is not None:
        es = r.mapping(pd["early_stopping"], "pdiff.early_stopping", ("grace_period",))
        grace = _spec_field(r, "grace_period", r.typed(es.get("grace_period", 2), "pdiff.early_stopping.grace_period",
                                                       int, "an integer",
                                                       maximum=MAXIMA["pdiff.early_stopping.grace_period"]))
        if len(objective) > 1:
            r.fail("pdiff.early_stopping", "early stopping (ASHA) needs a single objective")
    baselines = r.typed(pd.get("baselines", True), "pdiff.baselines", bool, "true or false")
    noise_sigma = _spec_field(r, "noise_sigma", r.typed(pd.get("noise_sigma", 0.01), "pdiff.noise_sigma", float,
                                                        "a number", maximum=MAXIMA["pdiff.noise_sigma"]))

    res = r.mapping(top.get("resources") or {}, "resources", ("sources", "trials"))
    source_res = _resources(r, res.get("sources"), "resources.sources", workers=True)
    trial_res = _resources(r, res.get("trials"), "resources.trials", workers=False)

    return _build(r, "", _sweep_spec,
        name=name, storage=storage, seed=seed, cells=cells, fixed=fixed, search=search, objective=objective,
        num_samples=num_samples, max_concurrent=max_concurrent, search_alg=search_alg, grace_period=grace, baselines=baselines,
        noise_sigma=noise_sigma, source_resources=source_res, trial_resources=trial_res,
        source_max_failures=max_failures, max_acc_drop=max_acc_drop, source_file=source,
        raw=raw,
    )
