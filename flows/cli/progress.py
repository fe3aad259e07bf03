"""Progress bars for long commands: a flow runs in a worker thread while the bar follows a
counter that the flow's own output makes visible (committed units in a manifest, or the
flow's progress artifacts, `flows.reporting.Progress`). Log lines print above the bar."""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

T = TypeVar("T")


def bar(**options) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False, **options)


def run_with_progress(description: str, total: int, work: Callable[[], T], done: Callable[[], int], interval: float = 1.0) -> T:
    """Run `work()` while a bar shows `done()` out of `total`; re-raises what `work` raised."""
    with bar() as progress:
        task = progress.add_task(description, total=total)

        def poll() -> None:
            try:
                progress.update(task, completed=min(done(), total))
            except Exception:  # a failed poll must not end the command; the flow reports errors itself
                pass

        return _in_thread(progress, work, poll, interval, lambda: progress.update(task, completed=total))


def run_following_progress(description: str, work: Callable[[], T], interval: float = 0.5) -> T:
    """Run `work()` (a flow) while a bar follows the progress artifacts it advances, so the
    bar shows what the Prefect UI shows for the same run."""
    from flows.reporting import following_progress

    state = {"done": 0, "total": None}

    def listener(_: str, done: int, total: int) -> None:
        state.update(done=done, total=total)

    with bar() as progress, following_progress(listener):
        task = progress.add_task(description, total=None)

        def poll() -> None:
            progress.update(task, completed=state["done"], total=state["total"])

        return _in_thread(progress, work, poll, interval, lambda: progress.update(task, completed=state["total"] or 1, total=state["total"] or 1))


def _in_thread(progress: Progress, work: Callable[[], T], poll: Callable[[], None], interval: float, finished: Callable[[], None]) -> T:
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # handed to the main thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    with logs_above(progress):
        thread.start()
        while thread.is_alive():
            thread.join(interval)
            poll()
        if "value" in outcome:
            finished()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@contextmanager
def logs_above(progress: Progress) -> Iterator[None]:
    """Prefect's console log handlers print through the bar's console while it is shown, so a
    log line goes above the bar instead of through it."""
    handlers = [h for h in _all_handlers() if hasattr(h, "console") and type(h).__name__ == "PrefectConsoleHandler"]
    saved = [(h, h.console) for h in handlers]
    for handler in handlers:
        handler.console = progress.console
    try:
        yield
    finally:
        for handler, console in saved:
            handler.console = console


def _all_handlers() -> list[logging.Handler]:
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    return [h for lg in loggers for h in lg.handlers]
