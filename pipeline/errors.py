"""Which failures are worth retrying: transient storage/network trouble and lost workers.

Everything else (bad input that escaped quarantine, a missing object, a refused write, a
bug) happens again on every attempt, so it fails at once instead of costing retries with
backoff. Used by the readers (a storage error must not be mistaken for a corrupt file) and by
the flows' `retry_condition_fn`.
"""

from __future__ import annotations

from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, ReadTimeoutError

from pipeline.storage import StorageUnreachable

# HTTP statuses and S3 error codes that say "try again"
TRANSIENT_S3_CODES = frozenset({"SlowDown", "RequestTimeout", "RequestTimeTooSkewed", "InternalError", "ServiceUnavailable", "Throttling", "503", "500"})
# Words in pyarrow's S3 error messages (it raises plain OSError) for network and server trouble
TRANSIENT_ARROW_MARKERS = ("NETWORK_CONNECTION", "SLOW_DOWN", "SERVICE_UNAVAILABLE", "INTERNAL_FAILURE", "REQUEST_TIMEOUT",
                           "THROTTLING", "curlCode", "Connection reset", "Connection refused", "timed out")
# Lost workers, named rather than imported so that Dask stays optional
LOST_WORKER_ERRORS = frozenset({"KilledWorker", "CommClosedError", "BrokenProcessPool", "WorkerLostError"})


def is_transient(exc: BaseException) -> bool:
    """True for errors a retry can cure: unreachable or overloaded storage, dropped
    connections, timeouts talking to storage, lost workers."""
    if type(exc).__name__ in LOST_WORKER_ERRORS:
        return True
    if isinstance(exc, (StorageUnreachable, EndpointConnectionError, ConnectionClosedError, ReadTimeoutError, ConnectionError)):
        return True
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or str(exc.response.get("Error", {}).get("Code", "")) in TRANSIENT_S3_CODES
    if isinstance(exc, TimeoutError):
        return type(exc).__module__.split(".")[0] != "prefect"  # a task's own time limit recurs
    if isinstance(exc, OSError) and not isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return any(marker in str(exc) for marker in TRANSIENT_ARROW_MARKERS)
    return False
