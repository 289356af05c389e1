"""The README's queries run as written, on the tiny sweep (issue 20, point 3): each ```sql block in
`python -m orchestrator.query` (test_query checks that they are `readme_questions()`), and the ```python block
that opens DuckDB on the views."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest

from orchestrator.query import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SQL = re.findall(r"```sql\n(.*?)```", README, flags=re.S)
DUCKDB = [b for b in re.findall(r"```python\n(.*?)```", README, flags=re.S) if "views import connect" in b]


@pytest.mark.parametrize("i", range(len(SQL)))
def test_each_readme_question_runs_as_written_in_the_query_cli(finished_sweep, capsys, i):
    """Table names, not paths (`orchestrator.query` refuses read_parquet): each question as the README prints it."""
    assert "read_parquet" not in SQL[i] and len(SQL) == 3
    assert main([finished_sweep.root, SQL[i], "--format", "json"]) == 0, capsys.readouterr().err
    rows = json.loads(capsys.readouterr().out)
    assert rows, f"the README's question {i + 1} has no answer on the tiny sweep"
    if i == 0:  # per (arch, dataset): both cells of the tiny sweep, each beside all three baselines
        assert sorted(r["arch"] for r in rows) == ["cnn_small", "mlp"]
        assert all(r[m] is not None for r in rows for m in ("noise", "average", "gaussian"))


def test_the_readme_duckdb_snippet_runs(finished_sweep):
    """The ```python block that opens DuckDB on the views, with the tiny sweep for results/smoke."""
    assert len(DUCKDB) == 1
    code = DUCKDB[0]
    assert 'Store("results", "smoke")' in code
    storage = str(Path(finished_sweep.root).parent)
    code = code.replace('Store("results", "smoke")', f"Store({storage!r}, {Path(finished_sweep.root).name!r})")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    cells = finished_sweep.read_pandas("sources", columns=["cell_id"]).cell_id
    assert len(cells) == 2 and all(c in out.getvalue() for c in cells), out.getvalue()
