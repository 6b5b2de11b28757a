"""Progress as generators: long steps ``yield Step(...)`` and ``return`` their result.

Generators let the napari thread worker report progress and stop between steps (Cancel), and
let the command line drive the same code with a progress bar.
"""
from __future__ import annotations

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
