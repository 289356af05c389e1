"""The package boundary of DESIGN.md: `pdiff` is a library usable without Ray in the process."""

import subprocess
import sys


def test_pdiff_imports_no_ray_optuna_or_parquet():
    code = ("import sys, pdiff, pdiff.pipeline, pdiff.collect, pdiff.evaluate; "
            "print(sorted(m for m in ('ray', 'optuna', 'pyarrow', 'duckdb') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_report_and_readers_import_no_ray_and_no_stage_module():
    """The report, its figures, the summary and the query read the tables alone: importing them loads no Ray
    and none of the stage modules that build networks or start Ray (the report drawn end to end is checked
    the same way in test_report.py)."""
    code = ("import sys, orchestrator.report, orchestrator.figures, orchestrator.summary, orchestrator.query; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray' or m in "
            "('orchestrator.sources', 'orchestrator.tuning', 'orchestrator.cluster', 'orchestrator.sweep')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_summary_and_query_import_no_torch():
    """The summary and a query run in seconds on a sweep of hundreds of cells only if they skip torch's
    import (seconds on its own): the method names and collapse thresholds come from `pdiff.names`."""
    code = ("import sys, orchestrator.summary, orchestrator.query, orchestrator.sql, pdiff.names; "
            "orchestrator.sql.summary_sql(); "
            "print(sorted(m for m in ('torch', 'pdiff.baselines', 'pdiff.pipeline') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_method_names_are_the_baselines():
    from pdiff.baselines import BASELINES
    from pdiff.names import METHODS

    assert tuple(BASELINES) == METHODS
