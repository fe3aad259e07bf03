"""The retry rule of every mapped task: retry transient storage/network trouble and lost
workers (`pipeline.errors.is_transient`); fail at once on anything that will happen again."""

from prefect import Task
from prefect.client.schemas.objects import State, TaskRun

from pipeline.errors import is_transient


def retry_if_transient(task: Task, task_run: TaskRun, state: State) -> bool:
    """A Prefect `retry_condition_fn` (called with the failed state, whose data is the exception)."""
    return isinstance(state.data, BaseException) and is_transient(state.data)
