"""A cell's Optuna study and the Tune searcher that goes on from it.

The objective is the val accuracy of the val-selected generated model (the test split is never used to
search), with the spec's `novelty` as an optional second one: minimise `val_max_iou`, the mean over the
generated models of the max IoU of each one's validation mistakes to any snapshot's (computed by pdiff;
lower = more novel).

Resume: the study is rebuilt from the `trials` table (Optuna's own `create_trial` / `add_trial`), so a
re-run only launches the missing trials and the sampler continues from everything already measured.

Optuna and ray.tune are imported inside the functions that search: importing them takes seconds that
`python -m orchestrator.sweep --dry-run` (and every reader of this module) should not pay.
"""

from __future__ import annotations

from typing import Any

from orchestrator.spec import Cell, SweepSpec
from orchestrator.stage2.journal import Journal
from orchestrator.stage2.trial import STORAGE, trial_identity
from orchestrator.store.columns import RENAMED
from orchestrator.store.tables import Store

__all__ = ["METRICS", "rebuild_study", "numbered_searcher"]

# The spec's objective name -> (the Tune metric, its mode).
METRICS = {"accuracy": ("val_acc", "max"), "mean_accuracy": ("val_mean_acc", "max"),
           "novelty": ("val_max_iou", "min")}
# The `trials` column each Tune metric is stored as: a percent with its `_pct` suffix (`val_acc_pct`).
STORED = {metric: RENAMED["trials"].get(metric, metric) for metric, _ in METRICS.values()}


def _sampler(spec: SweepSpec, seed: int, objectives: int):
    import optuna

    if spec.search_alg == "grid":  # skips grid points the study already holds
        return optuna.samplers.GridSampler({k: list(d.values) for k, d in spec.search.items()}, seed=seed)
    if spec.search_alg == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if objectives > 1:
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def rebuild_study(spec: SweepSpec, cell: Cell, finished: list[dict[str, Any]]):
    """An Optuna study holding every trial of this cell already in the tables:
    (its in-memory storage, its name, its sampler, the searched knobs' distributions)."""
    import optuna
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.InMemoryStorage()
    directions = ["maximize" if METRICS[o][1] == "max" else "minimize" for o in spec.objective]
    # Seeded by how much is already done: a resumed search must not replay the
    # random start-up suggestions it has already measured.
    sampler = _sampler(spec, spec.seed + len(finished), len(directions))
    name = f"{spec.name}-{cell.cell_id}"
    study = optuna.create_study(storage=storage, study_name=name, directions=directions, sampler=sampler)
    dists = {k: d.to_optuna() for k, d in spec.search.items()}
    for row in finished:
        params = {k: row[k] for k in dists}
        attrs = {k: row.get(k) for k in ("trial_id", "status")}  # the tables' names, for optuna-dashboard
        if row["status"] == "completed":
            values = [row[STORED[METRICS[o][0]]] for o in spec.objective]
            study.add_trial(create_trial(params=params, distributions=dists, values=values, user_attrs=attrs))
        elif row["status"] == "failed":  # diverged or raised: no objective value, as Optuna records a failure
            study.add_trial(create_trial(params=params, distributions=dists, state=TrialState.FAIL, user_attrs=attrs))
        else:
            study.add_trial(create_trial(params=params, distributions=dists, state=TrialState.PRUNED,
                                         user_attrs=attrs))
    return storage, name, sampler, dists


def numbered_searcher(spec: SweepSpec, cell: Cell, store: Store, finished: list[dict[str, Any]], first: int):
    """(the Tune searcher of the cell's rebuilt study, numbering its trials from `first`, and the study's
    journal, `<sweep>/optuna/<cell_id>.log`, which the searcher writes as trials end: close it after)."""
    from ray.tune.search.optuna import OptunaSearch

    storage, name, sampler, dists = rebuild_study(spec, cell, finished)
    # The study as a journal, <sweep>/optuna/<cell_id>.log, that the search then writes (optuna-dashboard)
    journal = Journal(store, cell.cell_id)
    storage = journal.adopt(storage, name)
    metrics = [METRICS[o][0] for o in spec.objective]
    modes = [METRICS[o][1] for o in spec.objective]
    single = len(metrics) == 1

    class NumberedOptunaSearch(OptunaSearch):
        """Optuna's suggestions, each numbered: the index makes equal suggestions distinct trials
        (a retried trial keeps its config, so it keeps its index and its files)."""

        next_index = first

        def suggest(self, trial_id: str):
            config = super().suggest(trial_id)
            if isinstance(config, dict):
                config, self.next_index = config | {"trial_index": self.next_index}, self.next_index + 1
                self._ot_trials[trial_id].set_user_attr("trial_id", trial_identity(spec, cell, config)[0])
            return config

        # A failed trial reports {"phase": "failed"} and no metric. OptunaSearch would read the
        # missing metric as a KeyError (single objective) or tell Optuna a [None, None] value
        # (two); Optuna's own state for it is FAIL, with no value.
        def on_trial_result(self, trial_id: str, result: dict):
            if result.get("phase") not in ("failed", STORAGE):
                super().on_trial_result(trial_id, result)

        # A trial stopped early (its last result a probe's, not "done") is PRUNED, as the study rebuilt
        # from the tables has it, not COMPLETE with a probe's value (or left RUNNING: two objectives).
        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
            if result and result.get("phase") in ("failed", STORAGE):
                result, error = None, True
            elif result and result.get("phase") != "done":
                result = None
            super().on_trial_complete(trial_id, result=result, error=error)
            journal.publish()

    searcher = NumberedOptunaSearch(space=dists, metric=metrics[0] if single else metrics,
                                    mode=modes[0] if single else modes, storage=storage, study_name=name,
                                    sampler=sampler)
    return searcher, journal
