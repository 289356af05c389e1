"""The spec is complete before anything is written: keys written twice, every number bounded, subset patterns
that match the architecture, YAML errors in one line, and a dry run that checks what the real run checks
before Ray (issue 17 part 4, issue 20 part 1).

Parser level and in-process `main(argv)`: no Ray, no training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import re
import types
from pathlib import Path
from typing import Any, Callable, Union, get_args, get_origin, get_type_hints

import pytest
import yaml
from test_spec import SOURCE, SWEEPS, edited, spec_error

from orchestrator import spec as spec_module, sweep as sweep_cli
from orchestrator.spec import MAX_SEED, MAXIMA, Resources, SpecError, SweepSpec, load_spec, parse_spec
from orchestrator.store.ownership import MARKER
from orchestrator.store.tables import Store
from orchestrator.sweep import plan_text
from pdiff import ARCHS, DATASETS, DEFAULT_SUBSET, CollectConfig, PdiffConfig, TrainConfig
from pdiff.pipeline import KNOBS


def run(*argv: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = sweep_cli.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("reached connect_ray")
    monkeypatch.setattr(sweep_cli, "connect_ray", refuse)


def refused_in_one_line(folder: Path, spec: Path, *extra: Any) -> str:
    """The spec through the command, dry run and real run alike: exit 2, one line, nothing written."""
    before = sorted(os.listdir(folder))
    for dry in (("--dry-run",), ()):
        code, out, err = run(spec, *dry, *extra)
        assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: {spec}: "), (code, out, err)
        assert "Traceback" not in err and sorted(os.listdir(folder)) == before
    return err.strip()


# -- probe 5: a key written twice ---------------------------------------------------------------------------

SMOKE = (SWEEPS / "smoke.yaml").read_text()


def _line_of(text: str, start: str) -> int:
    return next(i for i, line in enumerate(text.split("\n"), 1) if line.startswith(start))


def test_a_second_knob_is_refused_with_both_lines(tmp_path):
    text = SMOKE.replace("    ldm_steps: 400\n", "    ldm_steps: 400\n    ae_steps: 50\n", 1)
    first, second = _line_of(text, "    ae_steps: 3000"), _line_of(text, "    ae_steps: 50")
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    assert refused_in_one_line(tmp_path, spec, "--storage", tmp_path / "store") == \
        f"error: {spec}: pdiff.knobs.ae_steps: duplicate key (lines {first} and {second})"


def test_a_second_section_is_refused_with_both_lines(tmp_path):
    text = SMOKE + "pdiff:\n  num_samples: 1\n"
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    first, second = _line_of(text, "pdiff:"), len(text.split("\n")) - 2
    assert refused_in_one_line(tmp_path, spec, "--storage", tmp_path / "store") == \
        f"error: {spec}: pdiff: duplicate key (lines {first} and {second})"


@pytest.mark.parametrize("text, message", [
    ("name: x\n'name': y\n", "name: duplicate key (lines 1 and 2)"),  # quoted or plain, the same key
    ("name: x\nsources: {archs: [mlp], datasets: [digits], archs: [cnn_small]}\n",
     "sources.archs: duplicate key (line 2, columns 11 and 45)"),
    ("name: x\npdiff:\n  knobs:\n    latent_dim: {type: choice, values: [8], type: int}\n",
     "pdiff.knobs.latent_dim.type: duplicate key (line 4, columns 18 and 45)"),
])
def test_duplicate_keys_at_any_depth(tmp_path, text, message):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}: {message}"


def test_keys_that_only_look_alike_are_two_keys(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("1: a\n'1': b\n")  # an integer key and a string key: the parser names the first unknown one
    with pytest.raises(SpecError, match=r": 1: unknown key"):
        load_spec(path)


# -- YAML errors: one line with line and column (issue 20) ---------------------------------------------------

@pytest.mark.parametrize("text, where", [
    ("name: smoke\nsources: {archs: [mlp, datasets: [digits]\n", "at line 3, column 1: expected ',' or ']'"),
    ("name: x\n\tseed: 1\n", "at line 2, column 1: found character '\\t' that cannot start any token"),
    ("name: 'x\n", "at line 2, column 1: found unexpected end of stream (while scanning a quoted scalar at "
                   "line 1, column 7)"),
    ("name: x\n  seed: 1\n", "at line 2, column 7: mapping values are not allowed here"),
    ("name: x\nseed: 1\x00\n", "at line 2, column 8: unacceptable character #x0000"),
    ("name: x\nseed: 2024-02-30\n", "at line 2, column 7: day is out of range for month"),
])
def test_yaml_errors_are_one_line_with_line_and_column(tmp_path, text, where):
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    err = refused_in_one_line(tmp_path, spec, "--storage", tmp_path / "store")
    assert err.startswith(f"error: {spec}: <file>: not valid YAML {where}"), err


# -- probe 6: every number of every config dataclass has a maximum ------------------------------------------

# Numbers their dataclass bounds itself (a share, a decay, points of accuracy), documented beside MAXIMA.
BOUNDED = {"ae_min_r2": 1, "ae_min_fidelity": 1, "ema_decay": 1, "max_acc_drop": 100}
VALUES = [10**30, 1e300, -1, -0.5, 0, float("nan"), float("inf"), float("-inf")]


def documented_maximum(path: str) -> float | None:
    """A number's maximum where the spec module's docstring and --explain find it: spec.MAXIMA by path, else
    by knob or resource name; MAX_SEED for seeds; the bound of a number its dataclass bounds (BOUNDED)."""
    name = path.rsplit(".", 1)[-1]
    if path in ("seed", "sources.seeds"):
        return MAX_SEED
    if name.endswith("_channels"):
        return MAXIMA[path]  # of each entry
    return MAXIMA.get(path, MAXIMA.get(name, BOUNDED.get(name)))


def numeric(hint: Any) -> tuple[str, type] | None:
    """('scalar' | 'list', int | float) for a field that holds numbers (optional ones included), else None."""
    parts = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
    for part in parts:
        if get_origin(part) is tuple and get_args(part)[0] in (int, float):
            return "list", get_args(part)[0]
        if part in (int, float):
            return "scalar", part
    return None


@dataclasses.dataclass(frozen=True)
class Field:
    """One number a spec can set: where in the YAML, how a value is written there, how to read it back."""

    label: str
    path: str
    kind: type
    write: Callable[[Any], Any]
    read: Callable[[SweepSpec], Any]


def numeric_fields(cls: type) -> list[tuple[str, str, type]]:
    return [(f.name, *numeric(get_type_hints(cls)[f.name])) for f in dataclasses.fields(cls)
            if numeric(get_type_hints(cls)[f.name])]


def _knob_default(knob: str) -> Any:
    value = PdiffConfig().knobs()[knob]
    return 1 if value is None else list(value) if isinstance(value, tuple) else value


def spec_fields() -> tuple[list[Field], list[str]]:
    """Every numeric field of the config dataclasses, found by introspection, as the spec sets it; and the
    fields of PdiffConfig no spec can set (no knob names them: the spec refuses them as unknown keys)."""
    fields: list[Field] = []
    for section, cls, cell_part in (("sources.train", TrainConfig, "train"), ("sources.collect", CollectConfig,
                                                                               "collect")):
        for name, shape, kind in numeric_fields(cls):
            fields.append(Field(f"{cls.__name__}.{name}", f"{section}.{name}", kind, lambda v: v,
                                lambda s, p=cell_part, n=name: getattr(getattr(s.cells[0], p), n)))
    knob_of = {where: knob for knob, where in KNOBS.items()}
    unreachable = []

    def walk(cls: type, part: str) -> None:
        for f in dataclasses.fields(cls):
            hint = get_type_hints(cls)[f.name]
            if dataclasses.is_dataclass(hint):
                walk(hint, f.name)
                continue
            if not numeric(hint):
                continue
            shape, kind = numeric(hint)
            knob = knob_of.get((part, f.name))
            if knob is None:
                unreachable.append(f.name)
                continue
            wrap = (lambda v: [v]) if shape == "list" else (lambda v: v)
            fields.append(Field(f"knob {knob}", f"pdiff.knobs.{knob}", kind, wrap,
                                lambda s, k=knob: s.pdiff_config({}).knobs()[k]))
            if shape == "scalar":  # searched: the distribution's bounds (the Distribution dataclass's low, high)
                kind_name = "int" if kind is int else "uniform"
                fields.append(Field(f"knob {knob} searched, high", f"pdiff.knobs.{knob}", kind,
                                    lambda v, k=knob, t=kind_name: {"type": t, "low": _knob_default(k), "high": v},
                                    lambda s, k=knob: s.search[k].high))
                fields.append(Field(f"knob {knob} searched, low", f"pdiff.knobs.{knob}", kind,
                                    lambda v, k=knob, t=kind_name: {"type": t, "low": v,
                                                                    "high": documented_maximum(f"pdiff.knobs.{k}")},
                                    lambda s, k=knob: s.search[k].low))

    walk(PdiffConfig, "")
    paths = dict(spec_module.SPEC_PATHS)
    for name, shape, kind in numeric_fields(SweepSpec):
        fields.append(Field(f"SweepSpec.{name}", paths.get(name, name), kind, lambda v: v,
                            lambda s, n=name: getattr(s, n)))
    for group, read in (("sources", lambda s: s.source_resources), ("trials", lambda s: s.trial_resources)):
        for name, shape, kind in numeric_fields(Resources):
            path = f"resources.{group}.{name}"
            err = _error_of(edited({path: 1}))
            if err is not None and "unknown key" in err.message:
                continue  # this group has no such key (trials have no workers)
            fields.append(Field(f"Resources.{name} ({group})", path, kind, lambda v: v,
                                lambda s, n=name, r=read: getattr(r(s), n)))
    for name, shape, kind in numeric_fields(spec_module.Cell):  # the cell's seed: one of sources.seeds
        fields.append(Field(f"Cell.{name}", f"sources.{name}s", kind, lambda v: [v], lambda s, n=name: getattr(
            s.cells[0], n)))
    return fields, unreachable


def _error_of(raw: dict) -> SpecError | None:
    try:
        parse_spec(raw, SOURCE)
    except SpecError as err:
        return err
    return None


FIELDS, UNREACHABLE = spec_fields()


def test_the_walk_finds_every_number():
    labels = {f.label for f in FIELDS}
    assert {"knob ae_token_size", "knob ae_channels", "TrainConfig.lr", "CollectConfig.k", "SweepSpec.noise_sigma",
            "Resources.workers (sources)", "Cell.seed", "knob sample_steps searched, high"} <= labels
    assert "Resources.workers (trials)" not in labels
    assert len(labels) == len(FIELDS)


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f.label)
def test_every_number_has_a_maximum(field):
    maximum = documented_maximum(field.path)
    assert maximum is not None, f"{field.path} has no documented maximum (its field metadata, orchestrator.spec.MAXIMA)"
    if field.label.endswith("low"):
        return  # its maximum is the high bound's: checked by the 'high' case
    spec = parse_spec(edited({field.path: field.write(maximum)}), SOURCE)  # the maximum itself is allowed
    assert field.read(spec) in (maximum, (maximum,))
    above = maximum + 1 if field.kind is int else maximum * 2
    err = spec_error(edited({field.path: field.write(above)}))
    assert err.path == field.path or err.path.startswith((f"{field.path}.", f"{field.path}[")), str(err)
    assert re.search(rf"(above the maximum of|from 1 to) {maximum}\b|, {maximum:g}\]", err.message), str(err)


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f.label)
def test_huge_negative_zero_nan_and_inf_are_refused_or_fit(field):
    """Each value is refused with a SpecError naming the field, or accepted as a finite number within the
    field's documented maximum."""
    for value in VALUES:
        err = _error_of(edited({field.path: field.write(value)}))
        if err is not None:
            assert err.path == field.path or err.path.startswith((f"{field.path}.", f"{field.path}[")), \
                (value, str(err))
            assert "\n" not in str(err) and len(str(err)) < 300, str(err)
            continue
        got = field.read(parse_spec(edited({field.path: field.write(value)}), SOURCE))
        for number in got if isinstance(got, tuple) else (got,):
            assert math.isfinite(number) and 0 <= number <= documented_maximum(field.path), (value, got)


def test_fields_no_spec_can_set_stay_unreachable():
    """A numeric field of the p-diff configs without a knob is no spec key: adding a knob for it moves it into
    the walk above."""
    assert UNREACHABLE  # e.g. the LDM's timesteps and betas, the AE's check_every
    for name in UNREACHABLE:
        err = spec_error(edited({f"pdiff.knobs.{name}": 1}))
        assert err.path == f"pdiff.knobs.{name}" and "unknown key" in err.message


def test_the_overflowing_token_size_of_the_probe_exits_2(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SMOKE.replace("    ldm_steps: 400\n", "    ldm_steps: 400\n    ae_token_size: "
                                  "1000000000000000000000000000000\n", 1))
    assert refused_in_one_line(tmp_path, spec, "--storage", tmp_path / "store") == (
        f"error: {spec}: pdiff.knobs.ae_token_size: 1000000000000000000000000000000 is above the maximum of "
        f"{MAXIMA['pdiff.knobs.ae_token_size']}")


# -- probe 7: subset patterns that match no parameter ------------------------------------------------------

def test_a_pattern_that_matches_nothing_is_refused_before_anything_runs(tmp_path):
    raw = yaml.safe_load(SMOKE)
    raw["sources"]["subset"] = {"mlp": ["fc3.*", "fc9.*"]}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    err = refused_in_one_line(tmp_path, spec, "--storage", tmp_path / "store")
    assert err.startswith(f"error: {spec}: sources.subset.mlp[1]: 'fc9.*' matches no parameter of mlp on digits "
                          f"(its 6 parameters: fc1.weight, fc1.bias, "), err


@pytest.mark.parametrize("arch, datasets, patterns, where", [
    ("resnet18", ["cifar10", "mnist"], ["layer4.1.bn1.*", "layer5.*"], "sources.subset.resnet18[1]"),
    ("vit_tiny", ["digits"], ["heads.head.weight", "encoder.layers.encoder_layer_12.*"], "sources.subset.vit_tiny[1]"),
    ("cnn_small", ["digits"], ["BN2.*"], "sources.subset.cnn_small[0]"),  # names are case-sensitive, as in stage 1
])
def test_patterns_are_checked_against_the_built_architecture(arch, datasets, patterns, where):
    err = spec_error(edited({"sources.archs": [arch], "sources.datasets": datasets,
                             "sources.subset": {arch: patterns}}))
    assert err.path == where and "matches no parameter of" in err.message and len(str(err)) < 400, str(err)
    parse_spec(edited({"sources.archs": [arch], "sources.datasets": datasets,
                       "sources.subset": {arch: patterns[:-1] or ["*"]}}), SOURCE)


def test_the_default_subsets_match_every_architecture_on_every_dataset():
    parse_spec(edited({"sources.archs": list(ARCHS), "sources.datasets": list(DATASETS),
                       "sources.subset": {a: list(p) for a, p in DEFAULT_SUBSET.items()}}), SOURCE)


# -- the dry run checks what the real run checks before Ray (issue 20) ---------------------------------------

def test_dry_run_with_storage_that_is_a_file_exits_2_and_writes_nothing(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SMOKE)
    (tmp_path / "store").write_text("a file")
    assert refused_in_one_line(tmp_path, spec, "--storage", tmp_path / "store") == \
        f"error: {spec}: storage: {tmp_path / 'store'} is a file; the sweep's storage must be a folder"
    assert (tmp_path / "store").read_text() == "a file"


def test_dry_run_with_a_read_only_storage_exits_2(tmp_path, monkeypatch):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SMOKE)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: let os.access answer as the kernel would for anyone else
        access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **k: os.path.realpath(p) != str(locked) and access(p, mode))
    code, _, err = run(spec, "--dry-run", "--storage", locked / "deeper")
    assert code == 2 and err == (f"error: {spec}: storage: cannot write in {locked}/deeper/smoke ({locked} is "
                                 f"read-only); the sweep needs a writable folder or a reachable bucket\n"), err
    assert os.listdir(locked) == []


def test_dry_run_refuses_another_sweeps_folder(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SMOKE)
    (tmp_path / "store" / "smoke").mkdir(parents=True)
    (tmp_path / "store" / "smoke" / MARKER).write_text(json.dumps({"sweep": "other"}))
    code, _, err = run(spec, "--dry-run", "--storage", tmp_path / "store")
    assert code == 2 and "names another sweep ('other')" in err and err.count("\n") == 1, err


def test_dry_run_of_a_fresh_folder_passes_and_writes_nothing(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SMOKE)
    code, out, err = run(spec, "--dry-run", "--storage", tmp_path / "a" / "b")
    assert (code, err) == (0, "") and "stage 1 sources: 4 cells" in out
    assert sorted(os.listdir(tmp_path)) == ["spec.yaml"]


def test_the_plan_shows_distributions_in_full_and_the_placeholder_storage():
    spec = load_spec(SWEEPS / "resnet18.yaml")
    plan = plan_text(spec, Store(spec.storage, spec.name, spec.spec_hash))
    assert "ae_steps ~ int[10000, 30000] (log scale)" in plan and "ldm_steps ~ int[10000, 30000] (log scale)" in plan
    assert "input_noise ~ loguniform[0.0001, 0.01]" in plan and "latent_dim ~ choice[64, 128, 256]" in plan
    assert "storage s3://my-pdiff-bucket/sweeps is a placeholder: pass --storage" in plan
    mine = load_spec(SWEEPS / "resnet18.yaml", storage="s3://lab-results/sweeps")
    assert "placeholder" not in plan_text(mine, Store(mine.storage, mine.name, mine.spec_hash))


@pytest.mark.parametrize("storage, placeholder", [
    ("s3://my-pdiff-bucket/sweeps", True), ("s3://bucket/prefix", True), ("gs://your-bucket", True),
    ("s3://example", True), ("s3://lab-results/sweeps", False), ("results", False), ("my-bucket/x", False),
    ("s3://mylab/x", False),
])
def test_placeholder_storage(storage, placeholder):
    assert spec_module.is_placeholder_storage(storage) is placeholder
