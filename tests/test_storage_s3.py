"""A whole sweep on S3: tables and Ray's experiment state through pyarrow's S3 filesystem.

The S3 server is moto's, on loopback, started by the test: the same protocol and
the same pyarrow client that a real bucket gets, with no network beyond 127.0.0.1.
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import yaml
from tiny_sweep import CELLS, ROOT, TINY, sweep_command, sweep_env

from orchestrator.results.summary import summary
from orchestrator.store.tables import Store

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def bucket_uri(monkeypatch):
    from moto.server import ThreadedMotoServer

    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    uri = f"s3://pdiff-results/sweeps?endpoint_override={host}:{port}&scheme=http&region=us-east-1"
    fs, _ = pafs.FileSystem.from_uri(uri + "&allow_bucket_creation=true")
    fs.create_dir("pdiff-results")  # the bucket; the sweep itself may not create one
    yield uri
    server.stop()


@pytest.mark.cluster
def test_sweep_writes_and_reads_its_tables_on_s3(bucket_uri, tmp_path):
    spec = copy.deepcopy(TINY)
    spec["pdiff"]["num_samples"] = 1
    spec["pdiff"]["knobs"]["n_generated"] = 4
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    proc = subprocess.run(sweep_command(path, bucket_uri), cwd=ROOT, env=sweep_env() | CREDENTIALS,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not (tmp_path / "results").exists() and not (ROOT / bucket_uri).exists()

    store = Store(bucket_uri, "tiny")
    assert not store.is_local
    keys = {i.path for i in store.fs.get_file_info(pafs.FileSelector(store.root, recursive=True))}
    assert any("/_ray/" in k for k in keys)  # Ray Train / Tune state went to the bucket too
    assert len(store.read("sources")) == CELLS
    assert len(store.read("checkpoints")) == CELLS * 20
    assert len(store.read("trials")) == CELLS
    assert len(store.read("generated")) == CELLS * 4
    assert len(store.read("baselines")) == CELLS * 3 * 4
    table = summary(store)  # DuckDB over the S3 tables
    assert sorted(table.arch) == ["cnn_small", "mlp"] and (table.trials == 1).all()
    assert "original_best" in proc.stdout  # the summary printed at the end of the sweep
