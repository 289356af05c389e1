"""Property-based fuzzing of sweep specs (issue 10, part 7): random mutations of the shipped specs.

Every mutation of a valid spec in sweeps/*.yaml (keys deleted, values replaced by other
types, negative or huge numbers, odd strings, unknown keys added, values nested one level
deeper; also bytes spliced into the YAML text) must either parse, and then plan, hash and
build its Optuna distributions without error, or raise SpecError `FILE: path: message`
with a field path and a one-line message. Through `python -m orchestrator.sweep` (main,
in-process) it must exit 0 or exit 2 with `error: FILE: path: message`, never a
traceback, and write nothing in the storage folder on exit 2.

A `key:` line written twice is refused naming both lines; a YAML error names its line and column.

Parser level, so fast: ~800 examples in all, well under a minute on 2 cores.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from orchestrator import sweep as sweep_cli
from orchestrator.spec import SpecError, SweepSpec, load_spec, parse_spec
from orchestrator.store.tables import Store
from orchestrator.sweep import plan_text
from pdiff import ARCHS, DATASETS
from pdiff.pipeline import KNOBS

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
SPECS: dict[str, dict] = {p.name: yaml.safe_load(p.read_text()) for p in sorted(SWEEPS.glob("*.yaml"))}
TEXTS: dict[str, str] = {p.name: p.read_text() for p in sorted(SWEEPS.glob("*.yaml"))}
SOURCE = "fuzz.yaml"

# Keys worth adding: the spec's own vocabulary (so a known key lands in the wrong place) and a few others.
KEYS = sorted({"name", "storage", "seed", "sources", "pdiff", "resources", "archs", "datasets", "seeds", "train",
               "subset", "collect", "knobs", "objective", "num_samples", "max_concurrent", "search",
               "early_stopping", "grace_period", "baselines", "noise_sigma", "cpus", "gpus", "workers", "type",
               "low", "high", "log", "values", "epochs", "batch_size", "lr", "optimizer", "weight_decay", "schedule",
               "augment", "k", "interval", "unit", *KNOBS, *ARCHS, "bogus", ""})
WORDS = ["", ".", "..", "../..", "a/b", "/", "s3://", "nosuch://x", "\x00", "\n", " ", "true", "null", "1e400",
         "choice", "int", "uniform", "loguniform", "grid", "tpe", "random", "ddim", "ddpm", "accuracy", "novelty",
         "sgd", "adamw", "cosine", "step", "epoch", *ARCHS, *DATASETS, "x" * 300]
# YAML that parsers trip over: aliases, merges, tags, tabs, directives, impossible dates, huge ints.
NASTY = [b"&a ", b"*a", b"<<: *a\n", b"!!python/object:os.system ", b"!!binary x", b"\t", b"? ", b"- ", b"{", b"[",
         b"%YAML 1.1\n", b"---\n", b"...\n", b"\xff\xfe", b"2024-02-30", b"9" * 5000, b"1e400", b".nan", b"-.inf",
         b": ", b"\n  ", b"\"\\x", b"!!set {a}", b"!!omap [a: 1]", b"~", b"\x00"]
EXTREMES = [float("inf"), float("-inf"), float("nan"), 10**400, -(10**400), 10**9, -1, 0, 1e-320]
NUMBERS = [0, 1, -1, 2, 0.5, -0.5, 1e-12, 2**31 - 1, 2**31, 2**32, 2**63, 10**30, -(10**30), 10**400,
           float("inf"), float("-inf"), float("nan"), 1e308]

scalars = st.one_of(
    st.none(), st.booleans(), st.sampled_from(NUMBERS), st.sampled_from(WORDS),
    st.integers(), st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6) |
                                                                st.integers(-3, 3), inner, max_size=4),
    max_leaves=8,
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in a document: mapping keys and list positions, the root included."""
    out = [prefix]
    if isinstance(node, dict):
        for key, item in node.items():
            out += _paths(item, prefix + (key,))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            out += _paths(item, prefix + (i,))
    return out


def _leaves(node: Any, prefix: tuple = ()) -> list[tuple]:
    return [p for p in _paths(node, prefix) if p and not isinstance(_get(node, p), (dict, list))]


def _get(node: Any, path: tuple) -> Any:
    for part in path:
        node = node[part]
    return node


@st.composite
def mutated_specs(draw, max_mutations: int = 4) -> dict:
    raw = copy.deepcopy(SPECS[draw(st.sampled_from(sorted(SPECS)))])
    for _ in range(draw(st.integers(1, max_mutations))):
        leaves = _leaves(raw)
        path = draw(st.sampled_from(leaves if leaves and draw(st.integers(0, 3)) else _paths(raw)))
        op = draw(st.sampled_from(["delete", "replace", "replace", "add", "nest", "number", "extreme", "extreme", "duplicate"]))
        if not path:  # the root
            if op == "replace":
                raw = draw(values)
            elif op == "nest":
                raw = draw(st.sampled_from([[raw], {"spec": raw}]))
            elif isinstance(raw, dict):
                raw[draw(st.sampled_from(KEYS) | st.text(max_size=6))] = draw(values)
            continue
        parent, last = _get(raw, path[:-1]), path[-1]
        if op == "delete":
            del parent[last]
        elif op == "replace":
            parent[last] = draw(values)
        elif op == "add":
            target = parent[last]
            if isinstance(target, dict):
                target[draw(st.sampled_from(KEYS) | st.text(max_size=6))] = draw(values)
            elif isinstance(target, list):
                target.insert(draw(st.integers(0, len(target))), draw(values))
            else:
                parent[last] = [target, draw(values)]
        elif op == "nest":
            parent[last] = draw(st.sampled_from([[parent[last]], {"value": parent[last]},
                                                 {draw(st.sampled_from(KEYS)): parent[last]}]))
        elif op == "number":
            parent[last] = draw(st.sampled_from(NUMBERS))
        elif op == "extreme":
            parent[last] = draw(st.sampled_from(EXTREMES))
        elif op == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[last]))
        elif op == "duplicate" and isinstance(parent[last], list) and parent[last]:
            parent[last].append(copy.deepcopy(parent[last][0]))
    return raw


def check_parse(raw: Any, source: str = SOURCE) -> SweepSpec | None:
    """The property: a SweepSpec that the dry run can use, or a SpecError naming the file and a field."""
    try:
        spec = parse_spec(raw, source)
    except SpecError as err:
        assert_spec_error(err, source)
        return None
    exercise(spec)
    return spec


def assert_spec_error(err: SpecError, source: str) -> None:
    text = str(err)
    assert err.source == source and text.startswith(f"{source}: ")
    assert err.path and err.message, text
    assert text == f"{source}: {err.path}: {err.message}"
    assert "\n" not in err.path, text
    assert len(text) < 1000, text[:300]
    if err.message.startswith("not valid YAML"):  # where, as a person finds it in an editor
        assert re.match(r"not valid YAML at line \d+, column \d+: ", err.message), text


def exercise(spec: SweepSpec) -> None:
    """What a dry run (and the start of a real one) does with a parsed spec."""
    assert spec.cells and spec.num_samples >= 1
    plan_text(spec, Store(spec.storage if "://" in spec.storage else "/nonexistent-storage", spec.name,
                          spec.spec_hash))
    assert len(spec.spec_hash) == 12 and len(spec.search_hash) == 12
    assert len({c.cell_id for c in spec.cells}) == len(spec.cells)
    for dist in spec.search.values():
        dist.to_optuna()
    numbers = [v for cfg in (spec.cells[0].train, spec.cells[0].collect, spec.source_resources, spec.trial_resources)
               for v in dataclasses.asdict(cfg).values()]
    numbers += [spec.seed, spec.noise_sigma, *spec.fixed.values()]
    numbers += [v for d in spec.search.values() for v in (d.low, d.high, *d.values)]
    for value in numbers:  # a spec that parses holds finite numbers only
        assert not isinstance(value, float) or math.isfinite(value), (value, spec.raw)
    probe = {k: (d.values[0] if d.type == "choice" else d.low) for k, d in spec.search.items()}
    spec.pdiff_config(probe)


FUZZ = dict(deadline=None, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


def test_the_shipped_specs_are_valid():
    for name, raw in SPECS.items():
        assert check_parse(copy.deepcopy(raw)) is not None, name


@settings(max_examples=500, **FUZZ)
@given(mutated_specs())
def test_mutated_specs_parse_or_name_a_field(raw):
    check_parse(raw)


@settings(max_examples=100, **FUZZ)
@given(st.sampled_from(sorted(TEXTS)), st.lists(st.tuples(st.floats(0, 1), st.integers(0, 8),
                                                           st.binary(max_size=8) | st.sampled_from(NASTY)),
                                                 min_size=1, max_size=3))
def test_spliced_yaml_files_load_or_name_a_field(name, splices):
    """Bytes cut from and spliced into the YAML text (bad UTF-8, tabs, tags, aliases, broken
    syntax), or a value of one `key: value` line replaced by one of the nasty snippets."""
    data = TEXTS[name].encode()
    for where, cut, insert in splices:
        lines = data.split(b"\n")
        at_line = int(where * (len(lines) - 1))
        if cut % 2 and b": " in lines[at_line] and not lines[at_line].lstrip().startswith(b"#"):
            key = lines[at_line].split(b": ", 1)[0]
            lines[at_line] = key + b": " + NASTY[(cut + len(insert)) % len(NASTY)]
            data = b"\n".join(lines)
            continue
        at = int(where * len(data))
        data = data[:at] + insert + data[at + cut:]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "spec.yaml"
        path.write_bytes(data)
        try:
            spec = load_spec(path)
        except SpecError as err:
            assert_spec_error(err, str(path))
        else:
            exercise(spec)


@settings(max_examples=60, **FUZZ)
@given(st.sampled_from(sorted(TEXTS)), st.integers(0, 10**6), st.sampled_from(["", "0", "x", "{}", "[1]"]))
def test_a_key_written_twice_is_refused_with_both_lines(name, pick, value):
    """Any `key:` line of a shipped spec written once more right above itself (another value, so that a section
    stays valid YAML): PyYAML would keep the second silently; the spec names the key and both lines."""
    lines = TEXTS[name].split("\n")
    keyed = [i for i, line in enumerate(lines) if re.match(r"\s*[A-Za-z_]\w*:", line)]
    at = keyed[pick % len(keyed)]
    key = lines[at].split(":")[0]
    lines.insert(at, f"{key}: {value}")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "spec.yaml"
        path.write_text("\n".join(lines))
        with pytest.raises(SpecError) as info:
            load_spec(path)
    assert info.value.message == f"duplicate key (lines {at + 1} and {at + 2})", str(info.value)
    assert info.value.path.endswith(key.strip()), str(info.value)


@settings(max_examples=100, **FUZZ)
@given(mutated_specs())
def test_mutated_spec_files_load_or_name_a_field(raw):
    """The same through a YAML file, as a user writes it."""
    try:
        text = yaml.safe_dump(raw, allow_unicode=True)
    except (yaml.YAMLError, UnicodeEncodeError):
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "spec.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            spec = load_spec(path)
        except SpecError as err:
            assert_spec_error(err, str(path))
        else:
            exercise(spec)


def _main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = sweep_cli.main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def no_ray(monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("a spec that does not parse reached connect_ray")
    monkeypatch.setattr(sweep_cli, "connect_ray", refuse)


@settings(max_examples=40, **(FUZZ | {"suppress_health_check": FUZZ["suppress_health_check"] +
                                      [HealthCheck.function_scoped_fixture]}))
@given(mutated_specs())
def test_the_command_exits_0_or_2_and_writes_nothing_on_2(no_ray, raw):
    try:
        text = yaml.safe_dump(raw, allow_unicode=True)
    except (yaml.YAMLError, UnicodeEncodeError):
        return
    with tempfile.TemporaryDirectory() as folder:
        spec = Path(folder) / "spec.yaml"
        spec.write_text(text, encoding="utf-8")
        storage = Path(folder) / "store"
        code, out, err = _main([str(spec), "--dry-run", "--storage", str(storage)])
        assert code in (0, 2), (code, out, err)
        assert "Traceback" not in err
        if code == 2:
            assert err.startswith(f"error: {spec}: ") and err.count("\n") == 1, err
            assert out == ""
            # A real run of a spec that does not parse stops at the same place: exit 2, nothing written.
            code_real, out_real, err_real = _main([str(spec), "--storage", str(storage)])
            assert (code_real, out_real, err_real) == (code, out, err)
        else:
            assert "stage 1 sources" in out and err == ""
        assert sorted(os.listdir(folder)) == ["spec.yaml"]  # a dry run writes nothing either
