"""The package boundary of DESIGN.md: `pdiff` is a library usable without Ray in the process."""

import ast
import subprocess
import sys


def loaded_after(code: str, modules: str) -> list[str]:
    """The modules, of those the expression `modules` (over `m`, a loaded module's name) selects, that a fresh
    interpreter has loaded after running `code`."""
    script = f"import sys\n{code}\nprint(sorted(m for m in sys.modules if {modules}))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return ast.literal_eval(out)


def test_pdiff_imports_no_ray_optuna_or_parquet():
    assert loaded_after("import pdiff, pdiff.pipeline, pdiff.collect, pdiff.evaluate",
                        "m in ('ray', 'optuna', 'pyarrow', 'duckdb')") == []


def test_report_and_readers_import_no_ray_and_no_stage_module():
    """The report, its figures, the summary and the query read the tables alone: importing them loads no Ray
    and none of the stage modules that build networks or start Ray (the report drawn end to end is checked
    the same way in test_report.py)."""
    assert loaded_after("import orchestrator.report, orchestrator.query, orchestrator.results.figures, "
                        "orchestrator.results.summary",
                        "m.split('.')[0] == 'ray' or m.startswith(('orchestrator.stage1', 'orchestrator.stage2', "
                        "'orchestrator.runtime')) or m == 'orchestrator.sweep'") == []


def test_summary_and_query_import_no_torch():
    """The summary and a query run in seconds on a sweep of hundreds of cells only if they skip torch's
    import (seconds on its own): the method names and collapse thresholds come from `pdiff.names`."""
    assert loaded_after("import orchestrator.results.views, orchestrator.query, orchestrator.results.sql, pdiff.names\n"
                        "orchestrator.results.sql.summary_sql()",
                        "m in ('torch', 'pdiff.baselines', 'pdiff.pipeline')") == []


def test_method_names_are_the_baselines():
    from pdiff.baselines import BASELINES
    from pdiff.names import METHODS

    assert tuple(BASELINES) == METHODS
