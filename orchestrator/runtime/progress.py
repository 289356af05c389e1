"""Progress lines for long sweeps: one line per finished unit, with counts and elapsed time, and a
heartbeat at least every `HEARTBEAT` seconds saying what runs (phase, step x/y, elapsed, ETA).

Ray does not forward its workers' output to the console (see `cluster.connect_ray`), so workers
(Ray Train loops, Tune trials) do not print: they send `(key, what, text, show)` messages through
`Progress.sink`, a Ray queue that the driver drains while it waits (`Progress.poll`). `text` holds
the unit's state, e.g. "ldm step 300/2000"; with `show` it is also printed as `[what] text`.
"""

from __future__ import annotations

import math
import re
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, TextIO

from ray.util.queue import Queue

from orchestrator.runtime.cluster import driver_options

__all__ = ["Progress", "HEARTBEAT", "worker_log", "step_reporter"]

HEARTBEAT = 30.0  # seconds without a line after which the driver says what runs
STEP = re.compile(r"^(.*?)(\d+)/(\d+)")  # "source epoch 4/6: ..." -> ("source epoch ", 4, 6)


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@dataclass
class _Running:
    what: str
    started: float  # when the driver first heard of it
    origin: tuple[float, int]  # (time, step) the current phase's rate is measured from
    text: str = ""
    phase: str | None = None  # the text before the step counts
    last: tuple[float, int, int] | None = None  # (time, step, total) of the latest count


class Progress:
    def __init__(self, stream: TextIO = sys.stdout, clock: Callable[[], float] = time.monotonic,
                 heartbeat: float = HEARTBEAT):
        self.stream, self.clock, self.heartbeat = stream, clock, heartbeat
        self.start = self.last_line = clock()
        self.counts: dict[str, list[int]] = {}  # stage -> [done, total]
        self.running: dict[str, _Running] = {}  # key (cell or trial id) -> its latest state
        self._sink = None

    def say(self, message: str) -> None:
        self.last_line = self.clock()
        print(f"[{self.last_line - self.start:6.0f}s] {message}", file=self.stream, flush=True)

    def stage(self, name: str, total: int, done: int = 0) -> None:
        self.counts[name] = [done, total]
        self.say(f"{name}: {done}/{total} already done" if done else f"{name}: {total} to do")

    def advance(self, name: str, message: str) -> None:
        counts = self.counts[name]
        counts[0] += 1
        self.say(f"{name} {counts[0]}/{counts[1]}: {message}")

    def update(self, key: str, what: str, text: str, show: bool = False) -> None:
        """A running unit's state; with `show`, also a line `[what] text`."""
        now = self.clock()
        unit = self.running.setdefault(key, _Running(what, now, (now, 0)))
        unit.text = text
        m = STEP.match(text)
        if not m:  # a state without counts ("started"): the next phase is timed from here
            unit.phase, unit.origin, unit.last = None, (now, 0), None
        else:
            phase, step, total = m[1].strip(), int(m[2]), int(m[3])
            if phase != unit.phase:  # a later phase is timed from its first count
                unit.phase, unit.origin = phase, (unit.origin if unit.phase is None else (now, step))
            unit.last = (now, step, total)
        if show:
            self.say(f"[{what}] {text}")

    def finish(self, key: str) -> None:
        self.running.pop(key, None)

    def status(self, unit: _Running) -> str:
        """`what: phase x/y, elapsed, ETA` (the ETA of the current phase, at its rate so far)."""
        now = self.clock()
        line = f"{unit.what}: {STEP.match(unit.text)[0] if unit.last else unit.text}, " \
               f"{_duration(now - unit.started)} elapsed"
        if unit.last:
            (t0, s0), (t1, s1, total) = unit.origin, unit.last
            if s1 > s0 and t1 > t0:
                line += f", ETA {_duration((t1 - t0) / (s1 - s0) * (total - s1) - (now - t1))}"
        return line

    def tick(self) -> None:
        """After `heartbeat` seconds without a line: one line per running unit (or one saying what waits)."""
        if self.clock() - self.last_line < self.heartbeat:
            return
        if not self.running:
            stages = ", ".join(f"{name} {done}/{total}" for name, (done, total) in self.counts.items())
            self.say(f"working ({stages}); nothing running has reported yet")
        for unit in list(self.running.values()):
            self.say(f"running: {self.status(unit)}")

    @property
    def sink(self):
        """The queue workers send their messages to (a Ray actor of no CPU, made on first use)."""
        if self._sink is None:
            self._sink = Queue(actor_options={"num_cpus": 0, **driver_options()})
        return self._sink

    def poll(self) -> None:
        """Print what the workers sent since the last poll, then the heartbeat if one is due."""
        if self._sink is not None:
            n = self._sink.qsize()
            for message in self._sink.get_nowait_batch(n) if n else []:
                self.update(*message)
        self.tick()


def _send(sink: Any, message: tuple) -> None:
    if sink is not None:
        sink.put_nowait(message)
    elif message[3]:  # no driver listening (a loop run by hand): print the line as before
        print(f"[{message[1]}] {message[2]}", flush=True)


def worker_log(sink: Any, key: str, what: str) -> Callable[[str], None]:
    """A worker's `log(message)`: each message becomes a line on the sweep's console. Made when the
    unit starts, it tells the driver so (the elapsed time and the first phase's rate count from here)."""
    _send(sink, (key, what, "started", False))
    return lambda message: _send(sink, (key, what, message, True))


def step_reporter(sink: Any, key: str, what: str, totals: dict[str, int], every: float = 5.0,
                  clock: Callable[[], float] = time.monotonic) -> Callable[[str, int, float], None]:
    """`on_step(phase, step, loss)` for `pdiff.run_pdiff`: sends "phase step x/y" at a phase's first
    step and then at most once per `every` seconds (the console shows it in the heartbeat)."""
    last = {"phase": None, "time": -math.inf}

    def on_step(phase: str, step: int, loss: float) -> None:
        now = clock()
        if phase != last["phase"] or now - last["time"] >= every:
            last.update(phase=phase, time=now)
            _send(sink, (key, what, f"{phase} step {step + 1}/{totals[phase]}", False))

    return on_step
