"""The reference (`--explain`, docs/reference.md) cannot drift from the code or from the tables."""

from __future__ import annotations

import copy
import re
import subprocess
import sys

import pyarrow as pa
import pytest
from tiny_sweep import ROOT, sweep_env

from orchestrator.spec import REFERENCE_PATH, SpecError, parse_spec, reference, spec_keys
from orchestrator.store.columns import COLUMNS, KNOB_TABLE
from orchestrator.store.schema import TABLES
from pdiff.pipeline import KNOB_DOCS, KNOBS

MINIMAL = {"name": "x", "sources": {"archs": ["mlp"], "datasets": ["digits"]},
           "pdiff": {"early_stopping": {}}, "resources": {"sources": {}, "trials": {}}}
# Every mapping of the spec whose keys are fixed names (sources.subset's keys are architectures).
SECTIONS = ("", "sources", "sources.train", "sources.collect", "pdiff", "pdiff.knobs", "pdiff.early_stopping",
            "resources", "resources.sources", "resources.trials")


def _accepted_keys(section: str) -> set[str]:
    """The keys the parser accepts in `section`, read from its refusal of an unknown key."""
    raw = copy.deepcopy(MINIMAL)
    node = raw
    for part in filter(None, section.split(".")):
        node = node.setdefault(part, {})
    node["zz_unknown"] = 1
    with pytest.raises(SpecError) as err:
        parse_spec(raw)
    assert err.value.path == f"{section}.zz_unknown".lstrip("."), err.value
    return set(re.fullmatch(r"unknown key; expected one of: (.*)", err.value.message).group(1).split(", "))


def _documented(table: str) -> set[str]:
    """Every column the reference documents for `table`: the registry's, and the trials table's knob columns."""
    return {c.name for c in COLUMNS[table]} | (set(KNOBS) if table == KNOB_TABLE else set())


def test_docs_reference_is_what_the_code_generates():
    assert REFERENCE_PATH.read_text() == reference(), "docs/reference.md is stale: run `make docs`"


def test_sweep_explain_prints_the_reference():
    proc = subprocess.run([sys.executable, "-m", "orchestrator.sweep", "--explain"], cwd=ROOT, env=sweep_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == reference()


def test_every_knob_has_a_meaning():
    assert set(KNOB_DOCS) == set(KNOBS)
    assert all(doc.strip() for doc in KNOB_DOCS.values())


@pytest.mark.parametrize("section", SECTIONS)
def test_spec_reference_lists_exactly_the_keys_the_parser_accepts(section):
    documented = {key[len(section) + 1 if section else 0:] for key, *_ in spec_keys()
                  if key.startswith(f"{section}." if section else "")}
    documented = {key for key in documented if "." not in key}
    assert documented == _accepted_keys(section)


def test_every_schema_column_is_documented():
    assert set(COLUMNS) == set(TABLES)
    for table, schema in TABLES.items():
        missing = set(schema.names) - _documented(table)
        assert not missing, f"{table}: undocumented columns {sorted(missing)} (orchestrator/store/columns.py)"


def test_column_reference_matches_the_tables_of_a_finished_sweep(finished_sweep):
    for table in TABLES:
        present = set(finished_sweep.read_pandas(table).columns)
        documented = _documented(table)
        assert present, f"the tiny sweep wrote no {table} rows"
        assert not present - documented, f"{table}: undocumented columns {sorted(present - documented)}"
        assert not documented - present, f"{table}: documented but never written {sorted(documented - present)}"


def test_column_types_are_the_tables_of_a_finished_sweep(finished_sweep):
    """The registry's Arrow types are what the writers write, an added column's too (the summary's typed
    NULLs for older sweeps, views.COLLAPSE_COLUMNS, come from them); a column null throughout may be untyped."""
    for table, columns in COLUMNS.items():
        stored = {f.name: f.type for f in finished_sweep.read(table).schema}
        wrong = {c.name: f"{stored[c.name]} != {c.type}" for c in columns
                 if stored[c.name] not in (c.type, pa.null())}
        assert not wrong, f"{table}: columns not of their registry type {wrong}"


def test_spec_reference_defaults_are_the_parsers():
    spec = parse_spec(copy.deepcopy(MINIMAL))
    parsed = {
        "storage": spec.storage, "seed": str(spec.seed), "sources.seeds": str([c.seed for c in spec.cells]),
        "sources.max_failures": str(spec.source_max_failures), "pdiff.objective": f"[{', '.join(spec.objective)}]",
        "pdiff.num_samples": str(spec.num_samples), "pdiff.max_concurrent": str(spec.max_concurrent),
        "pdiff.search": spec.search_alg, "pdiff.early_stopping.grace_period": str(spec.grace_period),
        "pdiff.baselines": str(spec.baselines).lower(), "pdiff.noise_sigma": str(spec.noise_sigma),
        "resources.sources.cpus": str(spec.source_resources.cpus), "resources.sources.gpus": str(spec.source_resources.gpus),
        "resources.sources.workers": str(spec.source_resources.workers),
        "resources.trials.cpus": str(spec.trial_resources.cpus), "resources.trials.gpus": str(spec.trial_resources.gpus),
    }
    defaults = {key: default for key, _, default, _ in spec_keys()}
    assert {key: defaults[key] for key in parsed} == parsed
