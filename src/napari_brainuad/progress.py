"""Progress as generators: long steps ``yield Step(...)`` and ``return`` their result.

Generators let the napari thread worker report progress and stop between steps (Cancel), and
let the command line drive the same code with a progress bar.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Step:
    """One progress report: a stage name and the fraction of the whole job done, in [0, 1]."""

    stage: str
    fraction: float


Steps = Generator[Step, None, T]


def run(steps: Steps[T], callback: Callable[[Step], None] | None = None) -> T:
    """Drive a step generator to its end, passing each :class:`Step` to ``callback``."""
    while True:
        try:
            step = next(steps)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(step)


def scaled(steps: Steps[T], start: float, stop: float) -> Steps[T]:
    """Re-map the fractions of a sub-job onto ``[start, stop]`` of the whole job."""
    while True:
        try:
            step = next(steps)
        except StopIteration as end:
            return end.value
        yield Step(step.stage, start + (stop - start) * step.fraction)


def in_thread(job: Callable[[threading.Event], T], stage: str, fraction: float, poll_s: float = 0.1) -> Steps[T]:
    """Run ``job(stop)`` in a thread, yielding ``Step(stage, fraction)`` at once and every ``poll_s`` seconds.

    For long calls into libraries that cannot yield (registration, skull stripping): the caller
    stays responsive, and closing this generator (Cancel) returns at once and sets ``stop``, which
    a job that checks it uses to end early; its result is then discarded. The thread is not a
    daemon, so the interpreter waits for it rather than killing it inside native code. The job's
    exception, if any, is raised here.

    The caller waits on an event, never in ``Thread.join``: a Ctrl-C that interrupts ``join``
    (CPython before 3.13) marks the still-running thread as finished, so the interpreter exits
    without waiting for it and aborts when the thread returns from native code
    ("terminate called without an active exception", exit 134).
    """
    stop, done = threading.Event(), threading.Event()
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["value"] = job(stop)
        except BaseException as exc:  # handed over to the caller's thread
            outcome["error"] = exc
        finally:
            done.set()

    thread = threading.Thread(target=target, name=stage)
    thread.start()
    try:
        while True:
            yield Step(stage, fraction)
            if done.wait(poll_s):
                break
    finally:
        stop.set()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
