"""The layout of a sweep YAML: its mappings and keys in the file's order, each key tied to the field it fills.

A key's type, default, meaning and maximum are that field's (`spec_field` metadata here, `pdiff.config.setting`
for the keys of sources.train, sources.collect and pdiff.knobs). The parser reads the keys a mapping accepts and
requires from here, and the reference (`--explain`, docs/reference.md) lists them in this order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass
from typing import Any, Mapping

from orchestrator.spec.model import DISTRIBUTIONS, Cell, Resources, SweepSpec
from pdiff.config import KNOBS, CollectConfig, TrainConfig, field_named, knob_field

__all__ = ["Section", "KEYS", "KNOBS_SECTION", "section_keys", "required_keys", "is_required", "about_key",
           "field_of", "key_default", "leaf_keys", "SPEC_PATHS", "MAXIMA"]


@dataclass(frozen=True)
class Section:
    """A mapping of the sweep YAML. Its keys are the KEYS below it, or the fields of `fields` (a config
    dataclass) but `leave_out`; `per` names what one of its resource requests is for."""

    doc: str
    required: bool = False
    type: str = "mapping"
    shown: str = "{}"  # how the reference writes its default
    fields: type | None = None
    leave_out: tuple[str, ...] = ()
    per: str = ""


KNOBS_SECTION = "pdiff.knobs"  # its keys are pdiff.config.KNOBS

# Every mapping and every key of a sweep YAML, in the file's order: a Section, or (class, field) for the
# field the key fills.
KEYS: dict[str, Section | tuple[type, str]] = {
    "name": (SweepSpec, "name"),
    "storage": (SweepSpec, "storage"),
    "seed": (SweepSpec, "seed"),
    "sources": Section("stage 1: the source models and their snapshots", required=True),
    "sources.archs": (Cell, "arch"),
    "sources.datasets": (Cell, "dataset"),
    "sources.seeds": (Cell, "seed"),
    "sources.train": Section("how each source model is trained (keys below)", fields=TrainConfig),
    "sources.subset": (Cell, "subset"),
    "sources.collect": Section("how the K snapshots of the subset are collected (keys below)", fields=CollectConfig),
    "sources.max_failures": (SweepSpec, "source_max_failures"),
    "sources.max_acc_drop": (SweepSpec, "max_acc_drop"),
    "pdiff": Section("stage 2: the p-diff search per cell", required=True),
    KNOBS_SECTION: Section("a value is fixed; a mapping {type: " + " | ".join(DISTRIBUTIONS) + ", low, high | "
                           "values, log} is searched", type="knob -> value or distribution"),
    "pdiff.objective": (SweepSpec, "objective"),
    "pdiff.num_samples": (SweepSpec, "num_samples"),
    "pdiff.max_concurrent": (SweepSpec, "max_concurrent"),
    "pdiff.search": (SweepSpec, "search_alg"),
    "pdiff.early_stopping": Section("ASHA on intermediate val accuracy; omit for none", type="mapping or null",
                                    shown="null"),
    "pdiff.early_stopping.grace_period": (SweepSpec, "grace_period"),
    "pdiff.baselines": (SweepSpec, "baselines"),
    "pdiff.noise_sigma": (SweepSpec, "noise_sigma"),
    "resources": Section("Ray resources per task"),
    "resources.sources": Section("per stage-1 worker", fields=Resources, per="source worker"),
    "resources.trials": Section("per p-diff trial", fields=Resources, leave_out=("workers",), per="trial"),
}


def _parent(path: str) -> str:
    return path.rpartition(".")[0]


def section_keys(section: str) -> tuple[str, ...]:
    """The keys the mapping at `section` ("" for the top level) accepts, in the file's order."""
    if section == KNOBS_SECTION:
        return tuple(KNOBS)
    node = KEYS.get(section)
    if isinstance(node, Section) and node.fields is not None:
        return tuple(f.name for f in dataclasses.fields(node.fields) if f.name not in node.leave_out)
    return tuple(path.rpartition(".")[2] for path in KEYS if _parent(path) == section)


def field_of(path: str) -> dataclasses.Field:
    """The dataclass field that the spec key `path` fills (not for a Section): its default and metadata."""
    section, _, name = path.rpartition(".")
    if section == KNOBS_SECTION:
        return knob_field(name)
    cls, name = KEYS[path] if path in KEYS else (KEYS[section].fields, name)
    return field_named(cls, name)


def about_key(path: str) -> Mapping[str, Any]:
    """The metadata of the field a spec key fills: its `doc`, and `type`, `maximum`, `entries` and the rest
    where it has them."""
    return field_of(path).metadata


def key_default(path: str) -> Any:
    """What the parser takes for a key the file leaves out (a field key of KEYS): its `given`, else the field's
    default; MISSING for a required key."""
    f = field_of(path)
    return f.metadata.get("given", f.default)


def is_required(path: str) -> bool:
    node = KEYS[path]
    if isinstance(node, Section):
        return node.required
    return key_default(path) is MISSING and "shown" not in about_key(path)


def required_keys(section: str) -> tuple[str, ...]:
    """The keys of the mapping at `section` that the file must write."""
    return tuple(path.rpartition(".")[2] for path in KEYS if _parent(path) == section and is_required(path))


def leaf_keys() -> list[str]:
    """Every key that holds a value (not a mapping), in the file's order, the keys of a config section and the
    knobs right after their section."""
    out = []
    for path, node in KEYS.items():
        if not isinstance(node, Section):
            out.append(path)
        elif node.fields is not None or path == KNOBS_SECTION:
            out += [f"{path}.{key}" for key in section_keys(path)]
    return out


# SweepSpec's fields by the spec key that fills them: where the parser reports a ConfigError naming one.
SPEC_PATHS = {node[1]: path for path, node in KEYS.items() if not isinstance(node, Section) and node[0] is SweepSpec}
# The maximum of each spec key's value (of each entry for a list), by its path; the field metadata holds it.
MAXIMA: dict[str, int] = {path: about_key(path)["maximum"] for path in leaf_keys() if "maximum" in about_key(path)}
