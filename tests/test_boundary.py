"""The package boundary of DESIGN.md: `pdiff` is a library usable without Ray in the process."""

import subprocess
import sys


def test_pdiff_imports_no_ray_optuna_or_parquet():
    code = ("import sys, pdiff, pdiff.pipeline, pdiff.collect, pdiff.evaluate; "
            "print(sorted(m for m in ('ray', 'optuna', 'pyarrow', 'duckdb') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
