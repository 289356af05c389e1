"""Sweep YAML -> a typed, validated `SweepSpec`, section by section, in the file's order.

The reader maps YAML to Python types and checks each key's maximum (its field metadata); the values
themselves are checked by the dataclasses they fill (SweepSpec, Resources, Distribution, pdiff's configs),
whose `ConfigError` becomes a `SpecError` at the key's path. The keys each mapping accepts and requires, and
their defaults, are those of `orchestrator.spec.keys`.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from orchestrator.spec.keys import KEYS, SPEC_PATHS, about_key, field_of, key_default, required_keys, section_keys
from orchestrator.spec.loader import read_yaml
from orchestrator.spec.model import DISTRIBUTIONS, OBJECTIVES, Cell, Distribution, Resources, SweepSpec
from orchestrator.spec.reader import Reader
from pdiff import ARCHS, DATASETS, DEFAULT_SUBSET, ParameterSubset, PdiffConfig, build_model
from pdiff.checks import ConfigError, short
from pdiff.config import knob_field
from pdiff.data import DATASET_SHAPES

__all__ = ["parse_spec", "load_spec"]

# A field's Python type (its annotation) as YAML must hold it, and how a message names it.
_KINDS = {"int": int, "int | None": int, "float": float, "bool": bool, "str": str}
_WHAT = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def load_spec(path: str | Path, *, storage: str | None = None) -> SweepSpec:
    """Read and validate a sweep YAML file; `storage` overrides the file's."""
    path = Path(path)
    raw = read_yaml(path)
    if storage is not None and isinstance(raw, dict):
        raw["storage"] = storage
    return parse_spec(raw, str(path))


def parse_spec(raw: Any, source: str = "<spec>") -> SweepSpec:
    """Validate a parsed YAML document (see the package docstring for the format)."""
    r = Reader(source)
    if raw is None:
        r.fail("<file>", "the file is empty")
    top = _section(r, raw, "")
    fields = {"name": _value(r, top, "name"),
              "storage": _value(r, top, "storage", "a folder or a URI such as s3://bucket/prefix"),
              "seed": _value(r, top, "seed")}
    fields |= _sources(r, top["sources"])
    fields |= _pdiff(r, top["pdiff"])
    resources = _section(r, top.get("resources") or {}, "resources")
    fields["source_resources"] = _resources(r, resources.get("sources"), "resources.sources")
    fields["trial_resources"] = _resources(r, resources.get("trials"), "resources.trials")
    return _build(r, "", _sweep_spec, **fields, source_file=source, raw=raw)


def _section(r: Reader, value: Any, path: str) -> dict:
    """The mapping at `path`, holding only the keys it accepts and every key it requires."""
    return r.mapping(value, path, section_keys(path), required_keys(path))


def _value(r: Reader, section: dict, path: str, what: str | None = None) -> Any:
    """The value of the spec key `path` (a SweepSpec field) from its mapping, or its default: YAML -> the
    field's Python type, within the key's maximum, then the field's own check."""
    f = field_of(path)
    kind = _KINDS[f.type]
    value = section.get(path.rpartition(".")[2], key_default(path))
    value = r.typed(value, path, kind, what or _WHAT[kind], maximum=f.metadata.get("maximum"))
    return _checked(r, f.name, value)


def _checked(r: Reader, name: str, value: Any) -> Any:
    """`value` for SweepSpec's field `name`, checked now with that field's own check (so that the first error
    in the file's order is the one reported)."""
    check = field_of(SPEC_PATHS[name]).metadata.get("check")
    try:
        if check is not None:
            check(SimpleNamespace(**{name: value}), name)
    except ConfigError as err:
        r.fail(SPEC_PATHS[name], err.message)
    return value


def _build(r: Reader, path: str, make, *args, **kwargs) -> Any:
    """`make(*args, **kwargs)`, a config dataclass whose __post_init__ checks the values: its
    ConfigError (`lr: ...`, `channels[1]: ...`) becomes a SpecError at `path.lr`, `path[1]`."""
    try:
        return make(*args, **kwargs)
    except ConfigError as err:
        where = f"{path}.{err.field}" if path and err.field else err.field or path
        r.fail(where if err.index is None else f"{where}[{err.index}]", err.message)
    except (TypeError, ValueError) as err:
        r.fail(path, str(err))


def _sweep_spec(**fields: Any) -> SweepSpec:
    try:
        return SweepSpec(**fields)
    except ConfigError as err:
        raise ConfigError(SPEC_PATHS.get(err.field, err.field), err.message, err.index) from None


# -- sources: the cells ------------------------------------------------------------------------------------

def _sources(r: Reader, value: Any) -> dict[str, Any]:
    """SweepSpec's fields from the sources section: the cells, and how their runs fail."""
    src = _section(r, value, "sources")
    archs = r.names(src["archs"], "sources.archs", tuple(ARCHS), "architectures")
    datasets = r.names(src["datasets"], "sources.datasets", DATASETS, "datasets")
    seeds = _seeds(r, src)
    train = _config(r, src.get("train"), "sources.train")
    collect = _config(r, src.get("collect"), "sources.collect")
    subsets = _subsets(r, src, datasets)
    out = {"source_max_failures": _value(r, src, "sources.max_failures"),
           "max_acc_drop": _value(r, src, "sources.max_acc_drop", "a number of percentage points")}
    out["cells"] = tuple(Cell(arch, dataset, seed, tuple(subsets.get(arch, DEFAULT_SUBSET[arch])), train, collect)
                         for arch in archs for dataset in datasets for seed in seeds)
    return out


def _seeds(r: Reader, src: dict) -> list[int]:
    meta = about_key("sources.seeds")
    seeds = src.get("seeds", list(key_default("sources.seeds")))
    if not isinstance(seeds, list) or not seeds:
        r.fail("sources.seeds", "expected a non-empty list of integers")
    if len(seeds) > meta["entries"]:
        r.fail("sources.seeds", f"{len(seeds)} seeds, above the maximum of {meta['entries']}")
    for i, s in enumerate(seeds):
        r.typed(s, f"sources.seeds[{i}]", int, "an integer", minimum=0, maximum=meta["maximum"])
    if len(set(seeds)) != len(seeds):
        r.fail("sources.seeds", "duplicate seeds")
    return seeds


def _config(r: Reader, value: Any, path: str) -> Any:
    """A config dataclass from a mapping: unknown keys are errors here, values are checked by the
    dataclass itself (TrainConfig, CollectConfig), and sizes against each field's maximum here."""
    value = {} if value is None else value
    r.mapping(value, path, section_keys(path))
    cfg = _build(r, path, KEYS[path].fields, **value)
    for key in section_keys(path):
        maximum = about_key(f"{path}.{key}").get("maximum")
        if maximum is not None and getattr(cfg, key) > maximum:
            r.fail(f"{path}.{key}", f"{short(getattr(cfg, key))} is above the maximum of {maximum}")
    return cfg


def _subsets(r: Reader, src: dict, datasets: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """sources.subset: arch -> its patterns, each matching a parameter of the arch on every dataset."""
    subsets = r.mapping(src.get("subset") or {}, "sources.subset", tuple(ARCHS))
    out = {}
    for arch, patterns in subsets.items():
        out[arch] = r.names(patterns, f"sources.subset.{arch}", None, "patterns")
        for dataset in datasets:
            _check_patterns(r, arch, dataset, out[arch])
    return out


@functools.lru_cache(maxsize=None)
def _meta_model(arch: str, dataset: str) -> Any:
    """The architecture as built for the dataset, on torch's meta device: its parameter names and shapes,
    no memory and no weights (once per process: building a ResNet takes a fraction of a second)."""
    channels, classes, image_size = DATASET_SHAPES[dataset]
    with torch.device("meta"):
        return build_model(arch, channels=channels, classes=classes, image_size=image_size)


def _check_patterns(r: Reader, arch: str, dataset: str, patterns: tuple[str, ...]) -> None:
    """Each subset pattern matches a parameter of `arch` built for `dataset` (the rule of
    ParameterSubset.select, which stage 1 applies to the real model)."""
    model = _meta_model(arch, dataset)
    for i, pattern in enumerate(patterns):
        try:
            ParameterSubset.select(model, [pattern])
        except ValueError:
            names = [n for n, _ in model.named_parameters()]
            shown = ", ".join(names if len(names) <= 8 else [*names[:2], "...", *names[-6:]])
            r.fail(f"sources.subset.{arch}[{i}]", f"{short(pattern)} matches no parameter of {arch} on {dataset} "
                                                  f"(its {len(names)} parameters: {shown})")


# -- pdiff: the search per cell ----------------------------------------------------------------------------

def _pdiff(r: Reader, value: Any) -> dict[str, Any]:
    """SweepSpec's fields from the pdiff section: the knobs, fixed and searched, and how they are searched."""
    pd = _section(r, value, "pdiff")
    out = dict(zip(("fixed", "search"), _knobs(r, pd.get("knobs") or {})))
    out["objective"] = _objective(r, pd)
    out["num_samples"] = _value(r, pd, "pdiff.num_samples")
    out["max_concurrent"] = _value(r, pd, "pdiff.max_concurrent")
    out["search_alg"] = _search_alg(r, pd, out["search"], out["num_samples"])
    out["grace_period"] = _grace_period(r, pd, out["objective"])
    out["baselines"] = _value(r, pd, "pdiff.baselines")
    out["noise_sigma"] = _value(r, pd, "pdiff.noise_sigma")
    return out


def _knobs(r: Reader, value: Any) -> tuple[dict[str, Any], dict[str, Distribution]]:
    """(fixed, searched): a knob's value is fixed, a mapping is a distribution to search."""
    fixed, search = {}, {}
    for knob, value in _section(r, value, "pdiff.knobs").items():
        path = f"pdiff.knobs.{knob}"
        if isinstance(value, dict):
            dist = _distribution(r, value, path)
            for probe in ((dist.low, dist.high) if dist.type != "choice" else dist.values):
                _check_knob_value(r, knob, probe, path)
            search[knob] = dist
        else:
            _check_knob_value(r, knob, value, path)
            fixed[knob] = value
    return fixed, search


def _distribution(r: Reader, value: dict, path: str) -> Distribution:
    kind = value.get("type")
    if kind not in DISTRIBUTIONS:
        r.fail(f"{path}.type", f"expected one of {', '.join(DISTRIBUTIONS)}, got {short(kind)}")
    if kind == "choice":
        r.mapping(value, path, ("type", "values"), ("values",))
        values = value["values"]
        if not isinstance(values, list):
            r.fail(f"{path}.values", "expected a non-empty list")
        return _build(r, path, Distribution, "choice", values=tuple(values))  # it checks the values
    r.mapping(value, path, ("type", "low", "high", "log") if kind == "int" else ("type", "low", "high"),
              ("low", "high"))
    num = int if kind == "int" else float
    what = _WHAT[num]
    low = r.typed(value["low"], f"{path}.low", num, what)
    high = r.typed(value["high"], f"{path}.high", num, what)
    log = r.typed(value.get("log", False), f"{path}.log", bool, "true or false")
    return _build(r, path, Distribution, kind, low, high, log=log)  # it checks the range


def _check_knob_value(r: Reader, name: str, value: Any, path: str) -> None:
    """Build a PdiffConfig with just this knob: the config dataclasses check the value (their
    ConfigError names the knob, `ae_channels[1]: ...`); the knob's maximum is checked here."""
    try:
        cfg = PdiffConfig.from_knobs(**{name: value})
    except ConfigError as err:  # from_knobs names the knob itself; the path is already the knob's
        r.fail(path if err.index is None else f"{path}[{err.index}]", err.message)
    except (TypeError, ValueError) as err:
        r.fail(path, str(err))
    got, meta = cfg.knobs()[name], knob_field(name).metadata
    if "entries" in meta:  # a list of channel counts
        if len(got) > meta["entries"]:
            r.fail(path, f"expected a list of 1 to {meta['entries']} channel counts, got {len(got)}")
        for i, c in enumerate(got):
            if c > meta["maximum"]:
                r.fail(f"{path}[{i}]", f"expected a channel count from 1 to {meta['maximum']}, got {short(c)}")
    elif "maximum" in meta and got is not None and got > meta["maximum"]:
        r.fail(path, f"{short(got)} is above the maximum of {meta['maximum']}")


def _objective(r: Reader, pd: dict) -> tuple[str, ...]:
    objective = r.names(pd.get("objective", list(key_default("pdiff.objective"))), "pdiff.objective", OBJECTIVES,
                        "objectives")
    if objective[0] not in ("accuracy", "mean_accuracy") or "accuracy" in objective[1:] or "mean_accuracy" in objective[1:]:
        r.fail("pdiff.objective", "the first objective must be accuracy or mean_accuracy (novelty may follow)")
    return objective


def _search_alg(r: Reader, pd: dict, search: dict[str, Distribution], num_samples: int) -> str:
    search_alg = _checked(r, "search_alg", pd.get("search", key_default("pdiff.search")))
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
    return search_alg


def _grace_period(r: Reader, pd: dict, objective: tuple[str, ...]) -> int | None:
    """ASHA's grace period, or None with no early_stopping section."""
    if pd.get("early_stopping") is None:
        return None
    es = _section(r, pd["early_stopping"], "pdiff.early_stopping")
    grace = _value(r, es, "pdiff.early_stopping.grace_period")
    if len(objective) > 1:
        r.fail("pdiff.early_stopping", "early stopping (ASHA) needs a single objective")
    return grace


# -- resources ---------------------------------------------------------------------------------------------

def _resources(r: Reader, value: Any, path: str) -> Resources:
    """A Resources from its mapping: YAML -> Python (an integer count of CPUs becomes a float) and each
    field's maximum here; Resources checks the values."""
    keys = section_keys(path)
    value = r.mapping({} if value is None else value, path, keys)
    kwargs = {}
    for f in dataclasses.fields(Resources):
        if f.name in keys:
            kind = _KINDS[f.type]
            kwargs[f.name] = r.typed(value.get(f.name, f.default), f"{path}.{f.name}", kind, _WHAT[kind],
                                     maximum=f.metadata.get("maximum"))
    return _build(r, path, Resources, **kwargs)
