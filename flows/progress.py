"""Run progress (samples done of all), fanned out to whoever watches: the CLI bar, a Prefect progress artifact."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

Listener = Callable[[str, int, int], None]  # (label, done, total)
_listeners: list[Listener] = []


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


def report(label: str, done: int, total: int) -> None:
    for listener in list(_listeners):
        listener(label, done, total)
