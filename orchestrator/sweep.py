"""`python -m orchestrator.sweep SPEC`: validate, plan, run both stages on Ray, resume, summarise.

Exit status: 0 done, 2 bad input (spec, storage, resources, unreadable tables, a
folder that is not this sweep's, tables of an older schema version, another run holding the
sweep; nothing written),
1 a failure while running, 130 interrupted (Ctrl-C: re-run the same command to resume).

Before Ray starts, a real run checks that `<storage>/<name>` is this sweep's own
folder (Store.check_own), writes and removes a small file there
(cluster.probe_storage) and takes the sweep's lease (orchestrator.store.lease): one run
per sweep at a time. `--restart` deletes only a folder carrying this sweep's marker.

The console holds the sweep's own lines: Ray's output stays in Ray's log files unless
`--verbose`, and no colour codes reach a console that is not a terminal.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from typing import Sequence

import pyarrow as pa
import ray

from orchestrator.console import ArgumentParser, one_line, plain_console, printable, run
from orchestrator.spec.docs import reference
from orchestrator.results.console import sweep_text
from orchestrator.results.report import Refused, write_report
from orchestrator.results.summary import summary
from orchestrator.runtime.cluster import (VersionMismatch, check_resources, check_storage, connect_ray,
                                          missing_local_dirs, probe_storage, remove_created)
from orchestrator.runtime.calibrate import load_cache, spec_calibration, this_machine
from orchestrator.runtime.cost import Calibration
from orchestrator.runtime.estimate import done_lines, plan_cost_lines, wrap
from orchestrator.runtime.heal import reconcile
from orchestrator.runtime.progress import Progress
from orchestrator.spec import SpecError, SweepSpec, is_placeholder_storage, load_spec
from orchestrator.stage1.collection import run_sources
from orchestrator.stage2.search import run_tuning
from orchestrator.store.compaction import compact_sweep
from orchestrator.store.errors import CorruptTable, NotOurFolder, OldTables, storage_fault
from orchestrator.store.lease import Lease, LeaseHeld
from orchestrator.store.ownership import LEASE
from orchestrator.store.runs import RunRecord
from orchestrator.store.tables import Store

__all__ = ["main", "plan_text"]


def plan_text(spec: SweepSpec, store: Store) -> str:
    """The plan's lines (at most estimate.WIDTH characters: a long one wraps, never inside a distribution)."""
    src, trial = spec.source_resources, spec.trial_resources
    lines = [f"sweep {spec.name} (spec {spec.spec_hash}) -> {store.uri}"]
    if is_placeholder_storage(spec.storage):
        lines.append(f"  storage {spec.storage} is a placeholder: pass --storage PATH_OR_URI (a local folder, or a "
                     f"bucket every node can write); not checked")
    lines += [
        f"stage 1 sources: {len(spec.cells)} cells on Ray Train, {src.workers} worker(s) x "
        f"{src.cpus:g} CPU / {src.gpus:g} GPU each",
    ]
    for c in spec.cells:
        lines.append(f"  {c.cell_id}: {c.arch} on {c.dataset}, seed {c.seed}, K={c.collect.k}, "
                     f"subset {', '.join(c.subset)}")
    searched = [f"{k} ~ {d.describe()}" for k, d in spec.search.items()]
    fixed = [f"{k!r}: {v!r}" for k, v in spec.fixed.items()]
    lines += [
        f"stage 2 pdiff: {spec.num_samples} trials per cell = {spec.num_samples * len(spec.cells)} trials, "
        f"{spec.max_concurrent} at a time, {trial.cpus:g} CPU / {trial.gpus:g} GPU each",
        f"  search ({spec.search_alg}): {', '.join(searched)}" if spec.search else
        f"  no search: {spec.num_samples} repeat(s) per cell of one fixed configuration, each with its own seed",
        f"  fixed: {{{', '.join(fixed)}}}" if fixed else "  fixed: defaults",
        f"  objective: {' + '.join(spec.objective)}; early stopping: "
        f"{'ASHA, grace ' + str(spec.grace_period) if spec.grace_period else 'off'}; "
        f"baselines: {'on' if spec.baselines else 'off'}",
    ]
    # printable: a path or a name from the user may hold control characters (a lone ESC is no ANSI code)
    return "\n".join(printable(part) for line in lines for part in wrap(line, searched + fixed))


def _check_folder(spec: SweepSpec, store: Store, restart: bool) -> None:
    """Before Ray, reading only: `<storage>/<name>` is this sweep's own folder, with tables of this schema.
    Raises NotOurFolder, OldTables, or SpecError naming `storage`."""
    try:
        store.check_own(strict=restart)
        if not restart:  # --restart deletes an older schema's tables; anything else would mix them
            store.check_schema()
    except (OSError, ValueError) as err:  # an unreachable bucket, a bad URI
        raise SpecError(spec.source_file, "storage", f"cannot read {store.uri} ({err})") from None


def _check_writable(spec: SweepSpec, store: Store) -> None:
    """probe_storage's verdict on a local folder without writing (the dry run): no file stands in the way and
    the nearest existing folder takes new entries. A bucket was reached by _check_folder."""
    if store.is_local:
        folder, _ = missing_local_dirs(spec, store.root)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise SpecError(spec.source_file, "storage", f"cannot write in {store.uri} ({folder} is read-only); "
                                                         f"the sweep needs a writable folder or a reachable bucket")


def _print_summary(spec: SweepSpec, store: Store) -> None:
    """The console summary of this spec's cells (orchestrator.results.console.sweep_text)."""
    table = summary(store)
    # Only this spec's cells: the folder may also hold cells of an earlier version of it.
    table = table[table.cell_id.isin({c.cell_id for c in spec.cells})].reset_index(drop=True)
    print(sweep_text(table))


def _compact(store: Store, say) -> None:
    """Merge each finished cell's writer files into one file per table (store.compaction.compact_sweep),
    holding the lease, after both stages. A failure leaves the tables as they were (every row still read once):
    said, not raised."""
    try:
        merged = compact_sweep(store)
    except (OSError, ValueError, RuntimeError, CorruptTable, pa.ArrowException) as err:
        say(f"compaction skipped: {' '.join(str(err).split())[:300]} (the tables are complete as they are)")
        return
    if merged:
        say(f"compacted: {merged} writer files merged into one file per cell and table")


INTERRUPTED = "interrupted; re-run the same command to resume"


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status. Ctrl-C ends it with one line and 130."""
    try:
        with plain_console(), contextlib.ExitStack() as cleanup:  # the lease is released however the run ends
            return _main(argv, cleanup)
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr, flush=True)
        return 130
    except Exception as err:  # the storage failed (full, a quota, a lost connection): not a verdict, one line
        fault = storage_fault(err)
        if fault is None:
            raise
        print(f"error: the sweep's storage failed: {fault}. Unfinished work stays unfinished (nothing is recorded "
              f"as failed): clear the fault and re-run the same command to resume", file=sys.stderr, flush=True)
        return 1


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m orchestrator.sweep", description=__doc__.split("\n")[0])
    parser.add_argument("spec", nargs="?", help="sweep YAML file, e.g. sweeps/smoke.yaml")
    parser.add_argument("--explain", action="store_true",
                        help="print every spec key, p-diff knob and table column (docs/reference.md) and exit")
    parser.add_argument("--address", help="Ray cluster address (default: a running cluster, else a local Ray)")
    parser.add_argument("--storage", help="results root: a folder or a URI such as s3://bucket/prefix")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and its cost estimate, and exit")
    parser.add_argument("--calibrate", action="store_true",
                        help="with --dry-run: first measure this machine's throughputs the estimate lacks (seconds)")
    parser.add_argument("--restart", action="store_true", help="delete this sweep's results and start over")
    parser.add_argument("--shared-storage", action="store_true",
                        help="the local storage folder is a mount that every node of the cluster shares")
    parser.add_argument("--verbose", action="store_true",
                        help="also print Ray's own output (by default it stays in Ray's log files, "
                             "/tmp/ray/session_latest/logs on a local run)")
    return parser


def _main(argv: Sequence[str] | None, cleanup: contextlib.ExitStack) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.explain:
        sys.stdout.write(reference())
        return 0
    if args.spec is None:
        parser.error("the following arguments are required: spec (or --explain)")
    try:
        spec = load_spec(args.spec, storage=args.storage)
    except SpecError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)  # a path may hold a line break
        return 2
    store = Store(spec.storage, spec.name, spec.spec_hash)
    print(plan_text(spec, store), flush=True)
    if args.dry_run:
        return _dry_run(spec, store, args.restart, args.calibrate)
    refused = _prepare(spec, store, args, cleanup)
    if refused is not None:
        return refused
    _run(spec, store, argv, cleanup)
    return 0


def _dry_run(spec: SweepSpec, store: Store, restart: bool, calibrate: bool) -> int:
    """The real run's checks before Ray, reading only (a placeholder bucket is not reached), then the cost
    estimate from the stored throughputs (measured first with `calibrate`) and what the folder already holds."""
    placeholder = is_placeholder_storage(spec.storage)
    if not placeholder:
        try:
            _check_folder(spec, store, restart)
            _check_writable(spec, store)
        except (NotOurFolder, OldTables, SpecError) as err:
            print(f"error: {one_line(err)}", file=sys.stderr)
            return 2
    calibration = spec_calibration(spec) if calibrate else Calibration(this_machine(), tuple(load_cache()))
    readable = None if placeholder or restart else store
    lines = plan_cost_lines(spec, readable, calibration=calibration)
    print("\n".join(lines + (done_lines(spec, readable) if readable is not None else [])), flush=True)
    return 0


class _Refusal(Exception):
    """Bad input found by a check before the stages: the run stops with exit 2 and the error's one line."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


@contextlib.contextmanager
def _refusing(*errors: type[Exception]):
    """Inside the block, the `errors` that a check raises refuse the run (as `_Refusal`)."""
    try:
        yield
    except errors as err:
        raise _Refusal(err) from None


def _take_lease(spec: SweepSpec, store: Store, cleanup: contextlib.ExitStack) -> None:
    """The sweep's lease, released by `cleanup`; LeaseHeld where another run holds it, SpecError naming
    `storage` where it cannot be written."""
    try:
        cleanup.callback(Lease(store).acquire().release)
    except OSError as err:
        raise SpecError(spec.source_file, "storage", f"cannot take the sweep's lease in {store.uri} ({err})") from None


def _prepare(spec: SweepSpec, store: Store, args, cleanup: contextlib.ExitStack) -> int | None:
    """Before the stages: the folder is this sweep's own and writable, no other run holds it (the lease), Ray
    is up and can run the spec, and `--restart` has emptied the folder. None when ready; else 2, after one
    line, with the lease released and the folders the probe made removed again."""
    created: list[str] = []  # folders the probe made: removed again on exit 2
    try:
        with _refusing(NotOurFolder, OldTables, SpecError):  # before Ray, reading only
            _check_folder(spec, store, args.restart)
        with _refusing(SpecError):
            created = probe_storage(spec, store)
        with _refusing(LeaseHeld, SpecError):
            _take_lease(spec, store, cleanup)
        # Unreadable table files no longer stop the run: `reconcile` (in _run) quarantines and rebuilds them.
        with _refusing(VersionMismatch):
            connect_ray(args.address, args.verbose)
        with _refusing(SpecError):
            check_resources(spec)
            check_storage(spec, store, args.shared_storage)
        if args.restart:
            with _refusing(NotOurFolder):
                store.delete_all(keep=(LEASE,))
    except _Refusal as refusal:
        cleanup.close()  # releases the lease (if taken) first, so that the folders can go
        remove_created(created)
        print(f"error: {one_line(refusal.error)}", file=sys.stderr)
        return 2
    if args.restart:
        print(f"restart: deleted the results in {store.uri}", flush=True)
    store.write_marker()  # from now on the folder is this sweep's own (--restart may delete it)
    return None


def _run(spec: SweepSpec, store: Store, argv: Sequence[str] | None, cleanup: contextlib.ExitStack) -> None:
    """Both stages, then compaction, the summary and the report; the `runs` row records how the run ends."""
    command = ["python", "-m", "orchestrator.sweep", *(sys.argv[1:] if argv is None else argv)]
    record = RunRecord(store, shlex.join(command)).start()  # the `runs` row: 'running' until it ends
    cleanup.push(record.exit_hook)  # 'interrupted' (Ctrl-C) or 'failed' when what follows raises
    progress = Progress(sys.stdout)
    reconcile(spec, store, progress.say)  # quarantines what is corrupt or stale, so the stages rebuild it
    run_sources(spec, store, progress)
    run_tuning(spec, store, progress)
    record.observe_cluster()  # the hosts the run ended with
    ray.shutdown()  # the rest needs no Ray, and no line of Ray's may arrive after the sweep's last one
    _compact(store, progress.say)
    progress.say(f"done; tables in {store.uri}/{{sources,checkpoints,trials,generated,baselines}}")
    _print_summary(spec, store)
    record.end("done", 0)  # before the report, which shows it
    try:
        progress.say(f"report: {write_report(store)}")
    except Refused as err:  # the results stand; only the report could not be written
        progress.say(f"report not written: {err}; the tables are complete (python -m orchestrator.report)")


if __name__ == "__main__":
    run(main)
