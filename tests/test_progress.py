"""The sweep's console without Ray: progress lines, the 30 s heartbeat (on a fake clock), worker messages."""

from __future__ import annotations

import io

from orchestrator.console import _Plain
from orchestrator.runtime.progress import HEARTBEAT, Progress, step_reporter, worker_log


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Sink:
    """Stands in for the driver's Ray queue."""

    def __init__(self):
        self.items = []

    def put_nowait(self, item):
        self.items.append(item)

    def qsize(self) -> int:
        return len(self.items)

    def get_nowait_batch(self, n: int):
        out, self.items = self.items[:n], self.items[n:]
        return out


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_heartbeat_at_least_every_30s_says_what_runs():
    clock, out = Clock(), io.StringIO()
    progress = Progress(out, clock=clock)
    progress.stage("trials", total=4)
    clock.now += 10
    progress.update("t1", "cell-a trial t1", "ae step 1/100")  # a state, not a line
    clock.now += 10
    progress.update("t1", "cell-a trial t1", "ae step 11/100")  # 11 steps in 10 s (from its start): 81 s to go
    progress.tick()
    assert len(lines(out)) == 1  # only "trials: 4 to do": 20 s of quiet is not yet a heartbeat
    clock.now += HEARTBEAT - 20 + 1  # 31 s after the last line, 11 s after the last count
    progress.tick()
    assert lines(out)[1:] == ["[    31s] running: cell-a trial t1: ae step 11/100, 21s elapsed, ETA 1m10s"]
    progress.tick()
    assert len(lines(out)) == 2  # the next one waits another 30 s
    progress.update("t1", "cell-a trial t1", "ldm step 3/400")  # a new phase: no rate yet, so no ETA
    clock.now += HEARTBEAT
    progress.tick()
    assert lines(out)[-1] == "[    61s] running: cell-a trial t1: ldm step 3/400, 51s elapsed"
    progress.finish("t1")
    clock.now += HEARTBEAT
    progress.tick()
    assert lines(out)[-1] == "[    91s] working (trials 0/4); nothing running has reported yet"


def test_lines_reset_the_heartbeat():
    clock, out = Clock(), io.StringIO()
    progress = Progress(out, clock=clock)
    for _ in range(5):
        clock.now += HEARTBEAT - 1
        progress.say("a trial finished")
        progress.tick()
    assert all("running" not in line and "working" not in line for line in lines(out))


def test_worker_messages_reach_the_console_through_the_sink(capsys):
    clock, out, sink = Clock(), io.StringIO(), Sink()
    progress = Progress(out, clock=clock)
    progress._sink = sink
    log = worker_log(sink, "c1", "c1")  # a stage-1 worker: its log lines are console lines
    progress.poll()
    for epoch in (2, 4):
        clock.now += 4
        before = lines(out)
        log(f"source epoch {epoch}/6: loss 0.5")
        assert capsys.readouterr().out == "" and lines(out) == before  # the worker prints nothing itself
        progress.poll()  # the driver does
    assert lines(out) == ["[     4s] [c1] source epoch 2/6: loss 0.5", "[     8s] [c1] source epoch 4/6: loss 0.5"]
    # The first phase is timed from the unit's start ("started", sent when the log was made): 2 s an epoch.
    clock.now += 1
    assert progress.status(progress.running["c1"]) == "c1: source epoch 4/6, 9s elapsed, ETA 3s"

    on_step = step_reporter(sink, "t1", "c1 trial t1", {"ae": 50, "ldm": 80}, every=5.0, clock=clock)
    for step in range(50):  # 50 steps within one second: one message (the phase's first step)
        on_step("ae", step, 0.1)
    clock.now += 5
    on_step("ae", 50 - 1, 0.1)
    on_step("ldm", 0, 0.1)  # a new phase goes at once
    assert [m[2] for m in sink.items] == ["ae step 1/50", "ae step 50/50", "ldm step 1/80"]
    progress.poll()
    assert not sink.items and progress.running["t1"].text == "ldm step 1/80"
    assert len(lines(out)) == 2  # step counts are states for the heartbeat, not lines


def test_without_a_sink_a_worker_prints_its_lines(capsys):
    worker_log(None, "c1", "c1")("collected 5/20 snapshots")
    step_reporter(None, "t1", "t1", {"ae": 5})("ae", 0, 0.1)
    assert capsys.readouterr().out == "[c1] collected 5/20 snapshots\n"


def test_plain_stream_drops_colour_codes():
    out = io.StringIO()
    _Plain(out).write("\x1b[36m(pid=1)\x1b[0m dashboard at \x1b[1m\x1b[32mhttp://x \x1b[39m\x1b[22m\n")
    assert out.getvalue() == "(pid=1) dashboard at http://x \n"
