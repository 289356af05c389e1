"""The sweep spec as Python values: `SweepSpec`, its cells, searched distributions and resources.

Each field a spec key fills declares that key once (`spec_field`): its default, and in its metadata the
key's type and meaning as the reference writes them, its maximum, and the field's own check. The layout of
the YAML (which mapping holds which key) is `orchestrator.spec.keys`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import MISSING, dataclass, field
from functools import partial
from typing import Any

from orchestrator.store.paths import is_sweep_name
from pdiff import checks
from pdiff.checks import ConfigError, short
from pdiff.config import CollectConfig, PdiffConfig, TrainConfig
from pdiff.health import MAX_ACC_DROP

__all__ = ["SpecError", "Distribution", "Resources", "Cell", "SweepSpec", "spec_field", "is_placeholder_storage",
           "DISTRIBUTIONS", "OBJECTIVES", "SEARCHES", "MAX_SEED"]

DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
OBJECTIVES = ("accuracy", "mean_accuracy", "novelty")
SEARCHES = ("tpe", "random", "grid")  # Optuna samplers (NSGA-II replaces TPE for two objectives)

PLACEHOLDER_BUCKET = re.compile(r"(my|your|example)([-_.].*)?|bucket", re.IGNORECASE)
MAX_SEED = 2**31 - 1  # seeds are summed with trial counters and must stay below numpy's 2**32


def spec_field(kind: str, doc: str, default: Any = MISSING, **meta: Any) -> Any:
    """A field that a spec key fills: its default, and in its metadata the key's `type` (`kind`) and `doc` (the
    reference's words) with, where they apply, its `maximum` (of each entry for a list, which has at most
    `entries`), `check` (the field's own check, `check(obj, name)`: run by __post_init__, and by the parser as
    it reads the key), `given` (the key's default where the field's own is not it) and `shown` (how the
    reference writes the default)."""
    return field(default=default, metadata={"type": kind, "doc": doc, **meta})


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


def _check_fields(obj: Any) -> None:
    """Run each field's own `check` (its metadata), in field order."""
    for f in dataclasses.fields(obj):
        if "check" in f.metadata:
            f.metadata["check"](obj, f.name)


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
                    raise ConfigError("values", f"expected a number or a string (Optuna choices), got {short(v)}", i)
            return
        for bound in ("low", "high"):
            value = getattr(self, bound)
            if self.type != "int":
                checks.number(self, bound, low=-math.inf)  # finite
            elif isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(bound, f"expected an integer, got {short(value)}")
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
        import optuna.distributions as od  # optuna only where a search runs: the parser and readers never need it

        if self.type == "choice":
            return od.CategoricalDistribution(list(self.values))
        if self.type == "int":
            return od.IntDistribution(int(self.low), int(self.high), log=self.log)
        return od.FloatDistribution(float(self.low), float(self.high), log=self.type == "loguniform")


@dataclass(frozen=True)
class Resources:
    """The Ray resources of one task: a stage-1 worker or a p-diff trial (`{per}` in a meaning names which)."""

    cpus: float = spec_field("float > 0", "CPUs per {per}", 1.0, maximum=100_000)
    gpus: float = spec_field("float >= 0", "GPUs per {per} (a fraction below 1 shares one)", 0.0, maximum=10_000)
    workers: int = spec_field("int", "Ray Train (DDP) workers per cell", 1, maximum=10_000)

    def __post_init__(self):  # a bad value raises pdiff.checks.ConfigError naming the field
        checks.number(self, "cpus", low_open=True)
        checks.number(self, "gpus")
        if self.gpus > 1 and self.gpus != int(self.gpus):
            raise ConfigError("gpus", f"a fractional GPU request must be below 1, got {self.gpus}")
        checks.integer(self, "workers")


@dataclass(frozen=True)
class Cell:
    """One source model: (arch, dataset, seed) with its training knobs. Its id is its content. A spec lists the
    values of the first fields (sources.archs, ...): one cell per combination."""

    arch: str = spec_field("list of names", "architectures (pdiff.ARCHS)")
    dataset: str = spec_field("list of names", "datasets (pdiff.DATASETS)")
    seed: int = spec_field("list of ints", "one source model per arch x dataset x seed (a cell)", given=(0,),
                           maximum=MAX_SEED, entries=10_000)
    subset: tuple[str, ...] = spec_field("arch -> list of patterns", "the parameter tensors p-diff learns, as name "
                                         "patterns; [\"*\"]: the whole network (buffers stay the source's). The "
                                         "default AE (ae_arch chunked) is linear in the subset's size, measured to 1M "
                                         "numbers (6.1 CPU s per step, 6.3 GB); beyond, or where ae_converged is "
                                         "false: more ae_steps, a smaller ae_batch_size, a GPU",
                                         shown="pdiff.DEFAULT_SUBSET")
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
                                f"got {short(getattr(spec, name))}")


def _check_storage(spec: Any, name: str) -> None:
    value = getattr(spec, name)
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise ConfigError(name, f"expected a folder or a URI such as s3://bucket/prefix, got {short(value)}")


_count = partial(checks.integer, positive=False)  # an integer >= 0


@dataclass(frozen=True, kw_only=True)
class SweepSpec:
    """A validated sweep: its cells (stage 1) and the p-diff search run on each (stage 2)."""

    name: str = spec_field("slug", "the sweep's name and folder `<storage>/<name>`: letters, digits, - _ ., at most "
                                   "128 characters", check=_check_name)
    storage: str = spec_field("folder or URI", "results root: a local folder or a pyarrow URI (s3://bucket/prefix)",
                              "results", check=_check_storage)
    seed: int = spec_field("int", "base seed of the search and the baselines", 0, maximum=MAX_SEED, check=_count)
    cells: tuple[Cell, ...]
    fixed: dict[str, Any] = field(default_factory=dict)  # p-diff knobs held constant
    search: dict[str, Distribution] = field(default_factory=dict)  # p-diff knobs searched
    objective: tuple[str, ...] = spec_field(
        "list", "objectives: " + ", ".join(OBJECTIVES) + " (accuracy or mean_accuracy first: maximise "
        "trials.val_acc_pct, the best model's val accuracy, or trials.val_mean_acc_pct, the family's mean, which "
        "does not saturate; novelty: minimise trials.val_max_iou, a multi-objective search)", ("accuracy",))
    num_samples: int = spec_field("int", "trials per cell (with no searched knob: repeats of the fixed "
                                         "configuration)", 4, maximum=10_000, check=checks.integer)
    max_concurrent: int = spec_field("int", "trials of a cell running at once", 2, maximum=10_000,
                                     check=checks.integer)
    search_alg: str = spec_field("name", " | ".join(SEARCHES) + " (grid: all searched knobs choices; NSGA-II "
                                 "replaces TPE for two objectives)", "tpe", check=partial(checks.choice,
                                                                                          allowed=SEARCHES))
    grace_period: int | None = spec_field(  # ASHA early stopping; None: off
        "int", "probes a trial runs before it can be stopped", None, given=2, maximum=1_000_000,
        check=partial(checks.integer, optional=True))
    baselines: bool = spec_field("bool", "also score the baselines (pdiff.baselines) per cell", True,
                                 check=checks.flag)
    noise_sigma: float = spec_field("float > 0", "noise std of the noise-added baselines", 0.01, maximum=1_000,
                                    check=partial(checks.number, low_open=True))
    source_resources: Resources = Resources()
    trial_resources: Resources = Resources()
    source_max_failures: int = spec_field(  # Ray Train restarts per cell; each resumes from the last epoch
        "int", "restarts of a cell's Ray Train run (a lost node); it resumes", 5, maximum=1_000, check=_count)
    max_acc_drop: float = spec_field(  # a collection whose snapshots fall further below the source fails
        "float, points", "a collection whose snapshots' mean val accuracy falls more than this below the "
        "source's fails its cell (sources.status = failed: no baselines, no trials)", MAX_ACC_DROP,
        check=partial(checks.number, high=100.0))
    source_file: str = "<spec>"
    raw: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):  # a bad value raises pdiff.checks.ConfigError naming the field
        _check_fields(self)

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
