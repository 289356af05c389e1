"""Sweep spec validation: every bad spec is a SpecError `FILE: path.to.field: message` naming the field.

Pure parsing: no Ray, no training, no files written except the tmp specs of the load_spec tests.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.spec import SpecError, SweepSpec, load_spec, parse_spec
from pdiff import ARCHS, DATASETS

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = ROOT / "sweeps"
SOURCE = "spec.yaml"
DELETE = object()  # a sentinel: remove the key

# A minimal valid spec, like sweeps/smoke.yaml but self-contained so that the
# error tests do not depend on edits to the shipped sweeps.
MINIMAL: dict[str, Any] = {
    "name": "mini",
    "storage": "results",
    "seed": 0,
    "sources": {
        "archs": ["cnn_small", "mlp"],
        "datasets": ["digits"],
        "seeds": [0, 1],
        "train": {"epochs": 15, "batch_size": 64, "lr": 0.05, "optimizer": "sgd", "schedule": "cosine"},
        "collect": {"k": 50, "interval": 2, "unit": "step", "lr": 0.05},
    },
    "pdiff": {
        "knobs": {
            "latent_dim": {"type": "choice", "values": [32, 64]},
            "latent_noise": {"type": "loguniform", "low": 0.01, "high": 0.3},
            "ae_steps": 200,
            "sampler": "ddim",
        },
        "objective": ["accuracy"],
        "num_samples": 3,
        "max_concurrent": 2,
        "baselines": True,
    },
    "resources": {"sources": {"cpus": 1, "gpus": 0, "workers": 1}, "trials": {"cpus": 1, "gpus": 0}},
}


def edited(changes: dict[str, Any], base: dict | None = None) -> dict:
    """A deep copy of `base` (MINIMAL) with dotted paths set (or DELETEd)."""
    raw = copy.deepcopy(MINIMAL if base is None else base)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = raw
        for key in parents:
            node = node.setdefault(key, {})
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return raw


def spec_error(raw: Any) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_spec(raw, SOURCE)
    return info.value


def test_minimal_spec_is_valid():
    spec = parse_spec(copy.deepcopy(MINIMAL), SOURCE)
    assert isinstance(spec, SweepSpec)
    assert [(c.arch, c.dataset, c.seed) for c in spec.cells] == [
        ("cnn_small", "digits", 0), ("cnn_small", "digits", 1), ("mlp", "digits", 0), ("mlp", "digits", 1)]
    assert set(spec.search) == {"latent_dim", "latent_noise"}
    assert spec.fixed == {"ae_steps": 200, "sampler": "ddim"}
    assert spec.search["latent_noise"].type == "loguniform"
    assert spec.search["latent_dim"].values == (32, 64)
    assert spec.source_file == SOURCE
    assert spec.num_samples == 3 and spec.grace_period is None and spec.search_alg == "tpe"


# (id, changes to MINIMAL, the field the error must name, a fragment of its message)
ERRORS = [
    ("unknown-top-level-key", {"bogus": 1}, "bogus", "unknown key"),
    ("unknown-nested-key", {"sources.train.epoch": 10}, "sources.train.epoch", "epochs"),
    ("unknown-collect-key", {"sources.collect.K": 10}, "sources.collect.K", "unknown key"),
    ("wrong-type-string-for-int", {"sources.train.epochs": "ten"}, "sources.train.epochs", "an integer"),
    ("wrong-type-bool-for-int", {"seed": True}, "seed", "boolean"),
    ("wrong-type-string-for-float", {"sources.train.lr": "0.1"}, "sources.train.lr", "a number"),
    ("negative-seed", {"seed": -1}, "seed", ">= 0"),
    ("negative-weight-decay", {"sources.train.weight_decay": -0.1}, "sources.train.weight_decay", ">= 0"),
    ("bad-optimizer", {"sources.train.optimizer": "adam"}, "sources.train.optimizer", "sgd"),
    ("empty-archs", {"sources.archs": []}, "sources.archs", "non-empty"),
    ("empty-datasets", {"sources.datasets": []}, "sources.datasets", "non-empty"),
    ("empty-seeds", {"sources.seeds": []}, "sources.seeds", "non-empty"),
    ("unknown-dataset", {"sources.datasets": ["digits", "imagenet"]}, "sources.datasets[1]", "imagenet"),
    ("duplicate-seeds", {"sources.seeds": [0, 1, 0]}, "sources.seeds", "duplicate"),
    ("duplicate-archs", {"sources.archs": ["mlp", "mlp"]}, "sources.archs", "duplicate"),
    ("subset-of-unknown-arch", {"sources.subset": {"resnet99": ["fc.*"]}}, "sources.subset.resnet99",
     "unknown key"),
    ("uniform-low-equals-high", {"pdiff.knobs.latent_noise": {"type": "uniform", "low": 0.3, "high": 0.3}},
     "pdiff.knobs.latent_noise", "impossible range"),
    ("uniform-low-above-high", {"pdiff.knobs.latent_noise": {"type": "uniform", "low": 0.5, "high": 0.1}},
     "pdiff.knobs.latent_noise", "impossible range"),
    ("int-low-above-high", {"pdiff.knobs.ae_steps": {"type": "int", "low": 600, "high": 200}},
     "pdiff.knobs.ae_steps", "impossible range"),
    ("loguniform-low-zero", {"pdiff.knobs.latent_noise": {"type": "loguniform", "low": 0, "high": 0.3}},
     "pdiff.knobs.latent_noise.low", "low > 0"),
    ("loguniform-low-negative", {"pdiff.knobs.latent_noise": {"type": "loguniform", "low": -0.1, "high": 0.3}},
     "pdiff.knobs.latent_noise.low", "low > 0"),
    ("int-range-float-bound", {"pdiff.knobs.ae_steps": {"type": "int", "low": 1.5, "high": 300}},
     "pdiff.knobs.ae_steps.low", "an integer"),
    ("range-missing-high", {"pdiff.knobs.latent_noise": {"type": "uniform", "low": 0.1}},
     "pdiff.knobs.latent_noise.high", "required"),
    ("choice-with-list-value", {"pdiff.knobs.ae_channels": {"type": "choice", "values": [[8, 16, 32, 32]]}},
     "pdiff.knobs.ae_channels.values[0]", "number or a string"),
    ("choice-empty", {"pdiff.knobs.latent_dim": {"type": "choice", "values": []}},
     "pdiff.knobs.latent_dim.values", "non-empty"),
    ("choice-extra-key", {"pdiff.knobs.latent_dim": {"type": "choice", "values": [32], "low": 1}},
     "pdiff.knobs.latent_dim.low", "unknown key"),
    ("unknown-distribution", {"pdiff.knobs.latent_noise": {"type": "normal", "low": 0, "high": 1}},
     "pdiff.knobs.latent_noise.type", "loguniform"),
    ("distribution-without-type", {"pdiff.knobs.latent_noise": {"low": 0.1, "high": 1}},
     "pdiff.knobs.latent_noise.type", "uniform"),
    ("unknown-knob", {"pdiff.knobs.latent_dims": 64}, "pdiff.knobs.latent_dims", "latent_dim"),
    ("fixed-knob-float-for-int", {"pdiff.knobs.latent_dim": 1.5}, "pdiff.knobs.latent_dim", "1.5"),
    ("fixed-knob-bool-for-int", {"pdiff.knobs.latent_dim": True}, "pdiff.knobs.latent_dim", "True"),
    ("fixed-knob-string-for-int", {"pdiff.knobs.ae_steps": "200"}, "pdiff.knobs.ae_steps", "'200'"),
    ("fixed-knob-zero", {"pdiff.knobs.ae_steps": 0}, "pdiff.knobs.ae_steps", "positive"),
    ("fixed-knob-zero-batch", {"pdiff.knobs.ae_batch_size": 0}, "pdiff.knobs.ae_batch_size", "positive"),
    ("fixed-knob-negative-noise", {"pdiff.knobs.input_noise": -0.01}, "pdiff.knobs.input_noise", ">= 0"),
    ("optional-knob-wrong-type", {"pdiff.knobs.sample_steps": "twenty"}, "pdiff.knobs.sample_steps", "twenty"),
    ("unknown-sampler", {"pdiff.knobs.sampler": "euler"}, "pdiff.knobs.sampler", "ddim"),
    ("searched-knob-wrong-type", {"pdiff.knobs.latent_dim": {"type": "uniform", "low": 8.0, "high": 64.0}},
     "pdiff.knobs.latent_dim", "int"),
    ("searched-choice-bool-for-int", {"pdiff.knobs.latent_dim": {"type": "choice", "values": [32, True]}},
     "pdiff.knobs.latent_dim", "True"),
    ("num-samples-zero", {"pdiff.num_samples": 0}, "pdiff.num_samples", "> 0"),
    ("num-samples-float", {"pdiff.num_samples": 2.5}, "pdiff.num_samples", "an integer"),
    ("max-concurrent-zero", {"pdiff.max_concurrent": 0}, "pdiff.max_concurrent", "> 0"),
    ("collect-k-zero", {"sources.collect.k": 0}, "sources.collect.k", "> 0"),
    ("collect-k-negative", {"sources.collect.k": -5}, "sources.collect.k", "> 0"),
    ("epochs-zero", {"sources.train.epochs": 0}, "sources.train.epochs", "> 0"),
    ("early-stopping-two-objectives", {"pdiff.objective": ["accuracy", "novelty"],
                                       "pdiff.early_stopping": {"grace_period": 2}},
     "pdiff.early_stopping", "single objective"),
    ("early-stopping-unknown-key", {"pdiff.early_stopping": {"grace": 2}}, "pdiff.early_stopping.grace",
     "grace_period"),
    ("early-stopping-zero-grace", {"pdiff.early_stopping": {"grace_period": 0}},
     "pdiff.early_stopping.grace_period", "> 0"),
    ("objective-novelty-first", {"pdiff.objective": ["novelty", "accuracy"]}, "pdiff.objective",
     "first objective must be accuracy"),
    ("objective-novelty-only", {"pdiff.objective": ["novelty"]}, "pdiff.objective", "accuracy"),
    ("objective-unknown", {"pdiff.objective": ["accuracy", "loss"]}, "pdiff.objective[1]", "loss"),
    ("unknown-search", {"pdiff.search": "bayes"}, "pdiff.search", "grid"),
    ("grid-with-non-choice", {"pdiff.search": "grid"}, "pdiff.search", "latent_noise"),
    ("grid-smaller-than-num-samples", {"pdiff.search": "grid", "pdiff.num_samples": 3,
                                       "pdiff.knobs.latent_noise": 0.1},
     "pdiff.num_samples", "2 points"),
    ("one-point-grid-smaller-than-num-samples", {"pdiff.search": "grid", "pdiff.num_samples": 2,
                                                 "pdiff.knobs.latent_noise": 0.1,
                                                 "pdiff.knobs.latent_dim": {"type": "choice", "values": [32]}},
     "pdiff.num_samples", "1 points"),
    ("negative-gpus", {"resources.trials.gpus": -1}, "resources.trials.gpus", ">= 0"),
    ("fractional-gpus-above-one", {"resources.sources.gpus": 1.5}, "resources.sources.gpus", "fractional"),
    ("zero-cpus", {"resources.trials.cpus": 0}, "resources.trials.cpus", "> 0"),
    ("workers-on-trials", {"resources.trials.workers": 2}, "resources.trials.workers", "unknown key"),
    ("unknown-resource-group", {"resources.driver": {"cpus": 1}}, "resources.driver", "unknown key"),
    ("missing-name", {"name": DELETE}, "name", "required"),
    ("missing-sources", {"sources": DELETE}, "sources", "required"),
    ("missing-archs", {"sources.archs": DELETE}, "sources.archs", "required"),
    ("name-with-slash", {"name": "a/b"}, "name", "letters"),
    ("storage-not-string", {"storage": 3}, "storage", "URI"),
    ("sources-not-mapping", {"sources": ["cnn_small"]}, "sources", "mapping"),
]


@pytest.mark.parametrize("changes, field, fragment", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_error_names_the_field(changes, field, fragment):
    err = spec_error(edited(changes))
    assert err.source == SOURCE
    assert err.path == field, str(err)
    assert str(err).startswith(f"{SOURCE}: {field}: "), str(err)
    assert fragment in err.message, str(err)


def test_unknown_arch_names_the_entry_and_lists_known():
    err = spec_error(edited({"sources.archs": ["resnet99", "mlp"]}))
    assert err.path == "sources.archs[0]"
    assert str(err).startswith(f"{SOURCE}: sources.archs[0]: ")
    assert "'resnet99'" in err.message
    for arch in ARCHS:
        assert arch in err.message


def test_unknown_dataset_lists_known():
    err = spec_error(edited({"sources.datasets": ["imagenet"]}))
    assert err.path == "sources.datasets[0]"
    for dataset in DATASETS:
        assert dataset in err.message


def test_unknown_key_lists_the_allowed_ones():
    err = spec_error(edited({"pdiff.num_sample": 3}))
    assert err.path == "pdiff.num_sample"
    assert "num_samples" in err.message and "max_concurrent" in err.message


@pytest.mark.parametrize("raw", [[], "just a string", 3], ids=["list", "string", "number"])
def test_document_that_is_not_a_mapping(raw):
    err = spec_error(raw)
    assert err.path == "<file>"
    assert str(err).startswith(f"{SOURCE}: <file>: expected a mapping")


def test_spec_error_is_a_value_error():
    assert issubclass(SpecError, ValueError)
    err = SpecError("f.yaml", "a.b", "nope")
    assert str(err) == "f.yaml: a.b: nope"


@pytest.mark.parametrize("changes", [
    {"resources.trials.gpus": 0.25},
    {"resources.sources.gpus": 2},  # whole GPUs above one are fine
    {"pdiff.search": "grid", "pdiff.num_samples": 2, "pdiff.knobs.latent_noise": 0.1},  # exactly the grid
    # every knob fixed: num_samples are repeats of the one configuration, not grid points
    {"pdiff.search": "grid", "pdiff.num_samples": 3, "pdiff.knobs.latent_noise": 0.1, "pdiff.knobs.latent_dim": 32},
    {"pdiff.objective": ["accuracy", "novelty"]},
    {"pdiff.early_stopping": {"grace_period": 3}},
    {"pdiff.knobs.sample_steps": None},
    {"pdiff.knobs.sample_steps": 20},
    {"pdiff.knobs.latent_noise": 0},  # an integer for a float knob
    {"sources.train.weight_decay": 0},
    {"seed": 7},
], ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_edge_values_that_are_valid(changes):
    spec = parse_spec(edited(changes), SOURCE)
    assert isinstance(spec, SweepSpec)


def test_valid_edges_are_parsed_as_written():
    spec = parse_spec(edited({"resources.trials.gpus": 0.25, "pdiff.early_stopping": {"grace_period": 3},
                              "pdiff.objective": ["accuracy"]}), SOURCE)
    assert spec.trial_resources.gpus == 0.25
    assert spec.grace_period == 3
    grid = parse_spec(edited({"pdiff.search": "grid", "pdiff.num_samples": 2, "pdiff.knobs.latent_noise": 0.1}))
    assert grid.search_alg == "grid" and set(grid.search) == {"latent_dim"} and grid.fixed["latent_noise"] == 0.1
    repeats = parse_spec(edited({"pdiff.search": "grid", "pdiff.num_samples": 3, "pdiff.knobs.latent_noise": 0.1,
                                 "pdiff.knobs.latent_dim": 32}))
    assert repeats.search_alg == "grid" and not repeats.search and repeats.num_samples == 3


# -- load_spec: files ----------------------------------------------------------


def test_yaml_syntax_error(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: smoke\nsources: {archs: [mlp, datasets: [digits]\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.path == "<file>"
    assert str(info.value).startswith(f"{path}: <file>: not valid YAML")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n"], ids=["empty", "comment", "blank-lines"])
def test_empty_file(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}: <file>: the file is empty"


def test_nonexistent_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}: <file>: no such file"


def test_error_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(edited({"sources.train.epoch": 3})))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value).startswith(f"{path}: sources.train.epoch: unknown key")


def test_storage_override(tmp_path):
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    own = load_spec(path)
    assert own.storage == "results"
    assert own.source_file == str(path)
    moved = load_spec(path, storage=str(tmp_path / "elsewhere"))
    assert moved.storage == str(tmp_path / "elsewhere")
    assert moved.spec_hash == own.spec_hash
    assert [c.cell_id for c in moved.cells] == [c.cell_id for c in own.cells]


def test_storage_override_is_still_validated(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(edited({"seed": True})))
    with pytest.raises(SpecError) as info:
        load_spec(path, storage=str(tmp_path))
    assert info.value.path == "seed"


# -- the shipped sweeps ----------------------------------------------------------


def test_shipped_sweeps_parse():
    smoke = load_spec(SWEEPS / "smoke.yaml")
    assert smoke.name == "smoke" and len(smoke.cells) == 4
    assert {c.dataset for c in smoke.cells} == {"digits"}

    resnet = load_spec(SWEEPS / "resnet18.yaml")
    assert resnet.name == "resnet18" and len(resnet.cells) == 4
    assert {c.dataset for c in resnet.cells} == {"cifar10", "cifar100", "mnist", "stl10"}
    assert all(c.subset == ("layer4.1.bn1.*", "layer4.1.bn2.*") for c in resnet.cells)
    assert resnet.objective == ("accuracy", "novelty")
    assert resnet.storage.startswith("s3://")

    ablation = load_spec(SWEEPS / "ablation_noise.yaml")
    assert len(ablation.cells) == 1 and ablation.search_alg == "grid"
    assert set(ablation.search) == {"input_noise", "latent_noise"}
    grid = 1
    for d in ablation.search.values():
        assert d.type == "choice"
        grid *= len(d.values)
    assert ablation.num_samples == grid == 12


def test_every_sweep_in_the_folder_parses():
    files = sorted(SWEEPS.glob("*.yaml"))
    assert {f.name for f in files} >= {"smoke.yaml", "resnet18.yaml", "ablation_noise.yaml"}
    for f in files:
        assert isinstance(load_spec(f), SweepSpec), f


# -- identity: cell ids and spec hashes -----------------------------------------


def ids(raw: dict) -> list[str]:
    return [c.cell_id for c in parse_spec(raw, SOURCE).cells]


def test_cell_ids_are_deterministic_and_distinct():
    first, second = ids(edited({})), ids(edited({}))
    assert first == second
    assert len(set(first)) == len(first) == 4
    spec = parse_spec(edited({}), SOURCE)
    for cell, cid in zip(spec.cells, first):
        assert cid.startswith(f"{cell.arch}-{cell.dataset}-s{cell.seed}-")
    # The same cell in another file is the same cell: the id does not depend on the source name.
    assert [c.cell_id for c in parse_spec(edited({}), "other.yaml").cells] == first


def test_cell_ids_of_the_shipped_smoke_sweep_are_stable():
    a = [c.cell_id for c in load_spec(SWEEPS / "smoke.yaml").cells]
    b = [c.cell_id for c in load_spec(SWEEPS / "smoke.yaml").cells]
    assert a == b


@pytest.mark.parametrize("changes", [
    {"sources.train.lr": 0.1},
    {"sources.train.epochs": 16},
    {"sources.train.augment": False},
    {"sources.collect.k": 51},
    {"sources.collect.interval": 1},
], ids=lambda c: ",".join(c))
def test_training_knobs_change_every_cell_id(changes):
    before, after = ids(edited({})), ids(edited(changes))
    assert not set(before) & set(after)


def test_subset_changes_only_that_archs_cells():
    before = dict(zip(["c0", "c1", "m0", "m1"], ids(edited({}))))
    after = dict(zip(["c0", "c1", "m0", "m1"], ids(edited({"sources.subset": {"cnn_small": ["fc.*"]}}))))
    assert before["c0"] != after["c0"] and before["c1"] != after["c1"]
    assert before["m0"] == after["m0"] and before["m1"] == after["m1"]


def test_adding_a_seed_keeps_existing_cell_ids():
    before = ids(edited({}))
    after = ids(edited({"sources.seeds": [0, 1, 2]}))
    assert set(before) < set(after) and len(after) == 6


@pytest.mark.parametrize("changes", [
    {"pdiff.knobs.ae_steps": 300},
    {"pdiff.knobs.latent_dim": {"type": "choice", "values": [16, 32, 64]}},
    {"pdiff.num_samples": 5},
    {"pdiff.objective": ["accuracy", "novelty"]},
], ids=lambda c: ",".join(c))
def test_pdiff_knobs_keep_cell_ids_but_change_the_hashes(changes):
    base, changed = parse_spec(edited({}), SOURCE), parse_spec(edited(changes), SOURCE)
    assert [c.cell_id for c in changed.cells] == [c.cell_id for c in base.cells]
    assert changed.spec_hash != base.spec_hash
    assert changed.search_hash != base.search_hash


def test_spec_hash_ignores_storage_and_resources():
    base = parse_spec(edited({}), SOURCE)
    assert parse_spec(edited({}), SOURCE).spec_hash == base.spec_hash
    assert parse_spec(edited({"storage": "s3://bucket/elsewhere"}), SOURCE).spec_hash == base.spec_hash
    assert parse_spec(edited({"resources.trials.cpus": 2}), SOURCE).spec_hash == base.spec_hash
    assert parse_spec(edited({"sources.seeds": [0, 2]}), SOURCE).spec_hash != base.spec_hash
    assert parse_spec(edited({"seed": 1}), SOURCE).spec_hash != base.spec_hash


def test_spec_hash_ignores_key_order():
    raw = edited({})
    reordered = {k: raw[k] for k in reversed(list(raw))}
    reordered["pdiff"]["knobs"] = dict(reversed(list(raw["pdiff"]["knobs"].items())))
    assert parse_spec(reordered, SOURCE).spec_hash == parse_spec(edited({}), SOURCE).spec_hash


def test_pdiff_config_combines_fixed_and_searched_knobs():
    spec = parse_spec(edited({}), SOURCE)
    cfg = spec.pdiff_config({"latent_dim": 64, "latent_noise": 0.05})
    knobs = cfg.knobs()
    assert knobs["latent_dim"] == 64 and knobs["latent_noise"] == 0.05
    assert knobs["ae_steps"] == 200 and knobs["sampler"] == "ddim"


# -- safety (issue 10): names that stay one folder, documented maxima, finite numbers, files --------------

@pytest.mark.parametrize("name", [".", "..", "../x", "a/b", "a\\b", "/abs", "", "-lead", ".hidden", "_x", "a b",
                                  "a\nb", "caf\u00e9", "x" * 129])
def test_names_that_are_not_a_slug(name):
    err = spec_error(edited({"name": name}))
    assert err.path == "name" and "expected a slug" in err.message


@pytest.mark.parametrize("name", ["a", "smoke", "resnet18.v2", "A_b-c.d", "9", "x" * 128, "a..b", "a."])
def test_names_that_are_a_slug(name):
    assert parse_spec(edited({"name": name}), SOURCE).name == name


@pytest.mark.parametrize("field, maximum", [
    ("sources.collect.k", 100_000), ("sources.train.epochs", 10_000), ("pdiff.knobs.n_generated", 100_000),
    ("pdiff.knobs.ae_steps", 1_000_000), ("pdiff.knobs.ldm_steps", 1_000_000), ("pdiff.num_samples", 10_000),
    ("pdiff.knobs.latent_dim", 65_536), ("pdiff.max_concurrent", 10_000), ("resources.sources.workers", 10_000),
    ("seed", 2**31 - 1), ("sources.max_failures", 1_000),
])
def test_sizes_have_a_documented_maximum(field, maximum):
    import orchestrator.spec as spec_module

    assert str(maximum) in spec_module.__doc__.replace("_", "")  # documented beside the format
    changes = {field: maximum}
    if field == "pdiff.num_samples":
        changes["pdiff.knobs.latent_dim"] = {"type": "int", "low": 8, "high": 64}
    parse_spec(edited(changes), SOURCE)  # the maximum itself is allowed
    for too_big in (maximum + 1, 10**30, 10**5000):
        err = spec_error(edited(changes | {field: too_big}))
        assert err.path == field and f"above the maximum of {maximum}" in err.message
        assert len(str(err)) < 200


@pytest.mark.parametrize("field, value", [
    ("sources.train.lr", float("inf")), ("sources.train.lr", float("nan")), ("sources.collect.lr", 10**400),
    ("resources.sources.gpus", float("inf")), ("pdiff.noise_sigma", float("inf")),
    ("pdiff.knobs.latent_noise", float("inf")), ("pdiff.knobs.ae_lr", 10**400),
    ("pdiff.knobs.latent_noise", {"type": "uniform", "low": 0.1, "high": float("inf")}),
])
def test_numbers_must_be_finite(field, value):
    err = spec_error(edited({field: value}))
    assert err.path.startswith(field)
    assert "finite" in err.message or "too large" in err.message or "> 0" in err.message


@pytest.mark.parametrize("field, value, where", [
    ("pdiff.knobs.ae_channels", [], "pdiff.knobs.ae_channels"),
    ("pdiff.knobs.ae_channels", [8, "16"], "pdiff.knobs.ae_channels[1]"),
    ("pdiff.knobs.ldm_channels", [8, 0], "pdiff.knobs.ldm_channels[1]"),
    ("pdiff.knobs.ldm_channels", [8, True], "pdiff.knobs.ldm_channels[1]"),
    ("pdiff.knobs.ae_channels", [[8, 8], [8, 8]], "pdiff.knobs.ae_channels[0]"),
    ("pdiff.knobs.ae_channels", [8] * 17, "pdiff.knobs.ae_channels"),
])
def test_channel_lists_are_checked_entry_by_entry(field, value, where):
    assert spec_error(edited({field: value})).path == where


def test_unknown_keys_with_odd_characters_stay_on_one_line():
    err = spec_error(edited({"bad\nkey": 1}))
    assert "\n" not in str(err) and err.path == "'bad\\nkey'"
    err = spec_error(edited({"k" * 500: 1}))
    assert len(err.path) < 80


@pytest.mark.parametrize("text, fragment", [
    ("name: x\nsources: &s {archs: [mlp]}\npdiff: *s\n", "pdiff: YAML aliases are not allowed (*s at line 3"),
    ("name: x\nbase: &b {k: 1}\nsources:\n  collect:\n    <<: *b\n", "sources.collect.<<: YAML aliases"),
    ("name: x\nseed: 2024-02-30\n", "<file>: not valid YAML at line 2, column 7: day is out of range"),
    ("name: x\nseed: " + "9" * 5000 + "\n", "<file>: not valid YAML at line 2, column 7: "),
    ("name: x\nseed: !!python/object:os.system x\n", "<file>: not valid YAML at line 2, column 7: "),
    ("[" * 5000 + "]" * 5000 + "\n", "<file>: "),
])
def test_yaml_that_is_refused(tmp_path, text, fragment):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert f"{path}: {fragment}" in str(info.value)


def test_files_that_are_not_specs(tmp_path):
    with pytest.raises(SpecError, match="is a directory"):
        load_spec(tmp_path)
    (tmp_path / "latin1.yaml").write_bytes("name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(SpecError, match=r"<file>: not UTF-8 text \(byte 0xe9 at offset 9\)"):
        load_spec(tmp_path / "latin1.yaml")
    (tmp_path / "huge.yaml").write_bytes(b"#" * (1 << 20 | 1))
    with pytest.raises(SpecError, match="at most 1048576 bytes"):
        load_spec(tmp_path / "huge.yaml")
    with pytest.raises(SpecError, match="not a regular file"):
        load_spec("/dev/null")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "afile" / "spec.yaml")


def test_max_failures_defaults_to_five_and_leaves_the_hashes_alone():
    base = parse_spec(edited({}), SOURCE)
    assert base.source_max_failures == 5
    spot = parse_spec(edited({"sources.max_failures": 0}), SOURCE)
    assert spot.source_max_failures == 0 and spot.spec_hash == base.spec_hash
    assert [c.cell_id for c in spot.cells] == [c.cell_id for c in base.cells]
    for bad in (-1, 2.5, True, "5"):
        assert spec_error(edited({"sources.max_failures": bad})).path == "sources.max_failures"
