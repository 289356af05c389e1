"""Trial ids and indexes through the Tune + Optuna path, without a Ray cluster.

`search_cell` builds the cell's searcher and hands it to `tune.Tuner`; here `Tuner` (and the
`with_parameters` / `with_resources` wrappers, which would `ray.put`) are replaced by stubs that
keep what they are given, so the test asks the real `NumberedOptunaSearch` for its suggestions
and turns them into trial ids with the real `trial_identity`. Ray is never started.
"""

from __future__ import annotations

import copy
import tempfile

import pytest
import ray

from orchestrator.spec import parse_spec
from orchestrator.stage2 import search as tuning
from orchestrator.stage2.trial import trial_id_of, trial_identity
from orchestrator.store.tables import Store

SPEC = {
    "name": "ids",
    "storage": "results",
    "seed": 0,
    "sources": {"archs": ["mlp"], "datasets": ["digits"], "seeds": [0]},
    "pdiff": {
        "knobs": {"latent_dim": {"type": "choice", "values": [32]}, "latent_noise": 0.1, "ae_steps": 200},
        "objective": ["accuracy"],
        "num_samples": 3,
        "search": "tpe",
    },
}


class FakeStore(Store):
    """A real store in the test's temporary folder (the cell's Optuna journal goes there); Tune never uses it."""

    where = None  # the test's tmp_path (`_store_folder`)

    def __init__(self):
        super().__init__(tempfile.mkdtemp(prefix="ids-", dir=FakeStore.where), "ids")


@pytest.fixture(autouse=True)
def _store_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(FakeStore, "where", str(tmp_path))


@pytest.fixture
def captured(monkeypatch):
    """What `search_cell` passed to `tune.Tuner`; nothing is fitted and Ray is not started."""
    from ray import tune

    seen: dict = {}

    class FakeTuner:
        def __init__(self, trainable, *, param_space=None, tune_config=None, run_config=None):
            seen.update(param_space=param_space, tune_config=tune_config)

        def fit(self):
            seen["fitted"] = True
            return []  # a ResultGrid with no trial results

    monkeypatch.setattr(tune, "Tuner", FakeTuner)
    monkeypatch.setattr(tune, "with_parameters", lambda fn, **kwargs: fn)
    monkeypatch.setattr(tune, "with_resources", lambda fn, resources: fn)
    yield seen
    assert not ray.is_initialized()


def search_cell(spec, finished=(), store=None):
    """Run `search_cell`'s body (the undecorated function) up to the stubbed `Tuner`."""
    cell = spec.cells[0]
    fn = tuning.search_cell._function
    assert fn(spec, cell, store or FakeStore(), None, spec.num_samples, list(finished)) == cell.cell_id
    return cell


def suggested_ids(spec, seen, cell, n):
    searcher = seen["tune_config"].search_alg
    assert type(searcher).__name__ == "NumberedOptunaSearch"
    assert seen["tune_config"].num_samples == n and seen["fitted"]
    configs = [searcher.suggest(f"trial_{i:05d}") for i in range(n)]
    assert all(isinstance(c, dict) for c in configs), configs
    return [trial_identity(spec, cell, c) for c in configs]


def test_one_value_choice_gives_num_samples_distinct_trials(captured):
    spec = parse_spec(copy.deepcopy(SPEC), "ids.yaml")
    assert set(spec.search) == {"latent_dim"} and spec.search["latent_dim"].values == (32,)
    cell = search_cell(spec)
    identities = suggested_ids(spec, captured, cell, 3)
    ids = [trial_id for trial_id, _, _ in identities]
    assert [index for _, index, _ in identities] == [0, 1, 2]
    assert len(set(ids)) == 3, ids
    # Every suggestion has the same knob values: only the index tells the trials apart.
    knobs = [k for _, _, k in identities]
    assert all(k == knobs[0] for k in knobs) and knobs[0]["latent_dim"] == 32 and knobs[0]["latent_noise"] == 0.1
    for trial_id, index, k in identities:
        assert trial_id == trial_id_of(cell.cell_id, k, index)


def test_resumed_search_numbers_after_the_finished_trials(captured):
    spec = parse_spec(copy.deepcopy(SPEC), "ids.yaml")
    cell = spec.cells[0]
    knobs = spec.fixed | {"latent_dim": 32}
    finished = [knobs | {"trial_id": trial_id_of(cell.cell_id, knobs, i), "trial_index": i,
                         "status": "completed", "val_acc_pct": 0.9} for i in range(2)]
    search_cell(spec, finished)
    identities = suggested_ids(spec, captured, cell, 3)
    assert [index for _, index, _ in identities] == [2, 3, 4]
    ids = {trial_id for trial_id, _, _ in identities}
    assert len(ids) == 3 and not ids & {r["trial_id"] for r in finished}


def test_fixed_knob_spec_numbers_its_repeats(captured):
    raw = copy.deepcopy(SPEC)
    raw["pdiff"]["knobs"]["latent_dim"] = 32
    spec = parse_spec(raw, "ids.yaml")
    assert not spec.search
    cell = search_cell(spec)
    assert captured["tune_config"].search_alg is None and captured["tune_config"].num_samples == 1
    indexes = captured["param_space"]["trial_index"]["grid_search"]
    assert indexes == [0, 1, 2]
    ids = {trial_identity(spec, cell, {"trial_index": i})[0] for i in indexes}
    assert len(ids) == 3


def test_equal_knobs_different_index_are_different_trials():
    knobs = {"latent_dim": 32, "latent_noise": 0.1}
    assert trial_id_of("mlp-digits-0", knobs, 0) != trial_id_of("mlp-digits-0", knobs, 1)
    assert trial_id_of("mlp-digits-0", knobs, 1) == trial_id_of("mlp-digits-0", dict(reversed(knobs.items())), 1)
    assert trial_id_of("mlp-digits-0", knobs, 0) != trial_id_of("mlp-digits-1", knobs, 0)


def test_the_study_is_a_journal_kept_current(captured):
    """`<sweep>/optuna/<cell_id>.log` (what optuna-dashboard opens): the trials of the tables when the search
    starts, then each trial as the search asks and tells it; a re-run rebuilds it from the tables."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    spec = parse_spec(copy.deepcopy(SPEC), "ids.yaml")
    cell = spec.cells[0]
    knobs = spec.fixed | {"latent_dim": 32}
    finished = [knobs | {"trial_id": trial_id_of(cell.cell_id, knobs, i), "trial_index": i, "status": status,
                         "val_acc_pct": 90.0 + i if status == "completed" else None}
                for i, status in enumerate(["completed", "completed", "failed"])]
    store = FakeStore()
    search_cell(spec, finished, store)
    path = store.path("optuna", f"{cell.cell_id}.log")

    def journal():
        study = optuna.load_study(study_name=None, storage=JournalStorage(JournalFileBackend(path)))
        return [(t.state.name, t.values, t.user_attrs.get("trial_id")) for t in study.trials]

    assert journal() == [("COMPLETE", [90.0], finished[0]["trial_id"]), ("COMPLETE", [91.0], finished[1]["trial_id"]),
                         ("FAIL", None, finished[2]["trial_id"])]
    identities = suggested_ids(spec, captured, cell, 3)
    searcher = captured["tune_config"].search_alg
    searcher.on_trial_complete("trial_00000", {"val_acc": 95.0, "phase": "done"})
    searcher.on_trial_complete("trial_00001", {"val_acc": 20.0, "phase": "ldm"})  # stopped early, after a probe
    searcher.on_trial_complete("trial_00002", {"phase": "failed", "reason": "ae_loss is nan"})
    assert journal()[3:] == [("COMPLETE", [95.0], identities[0][0]), ("PRUNED", None, identities[1][0]),
                             ("FAIL", None, identities[2][0])]
    store.check_own(strict=False)  # the folder holds only what a sweep writes

    search_cell(spec, finished, store)  # resumed: the journal is the tables' trials again, nothing twice
    assert len(journal()) == len(finished)
