"""Progress bars for long commands: a flow runs in a worker thread while the bar follows a
counter that the flow's own output makes visible (e.g. committed units in a manifest)."""

from __future__ import annotations

import threading
import time
from typing import Callable, TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

T = TypeVar("T")


def bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False)


def run_with_progress(description: str, total: int, work: Callable[[], T], done: Callable[[], int], interval: float = 1.0) -> T:
    """Run `work()` while a bar shows `done()` out of `total`; re-raises what `work` raised."""
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # handed to the main thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    with bar() as progress:
        task = progress.add_task(description, total=total)
        thread.start()
        while thread.is_alive():
            thread.join(interval)
            try:
                progress.update(task, completed=min(done(), total))
            except Exception:  # a failed poll must not end the command; the flow reports errors itself
                pass
        progress.update(task, completed=total if "value" in outcome else progress.tasks[0].completed)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
