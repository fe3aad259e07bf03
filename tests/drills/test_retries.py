"""Which errors are retried: real exceptions from boto3, pyarrow and Prefect through
`is_transient`, and one deterministic failure through the real ingest task (one attempt)."""

from __future__ import annotations

import io
import time

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from botocore.exceptions import ClientError, EndpointConnectionError

from pipeline.errors import is_transient
from pipeline.process import ReadOptions, select_sources
from pipeline.storage import ObjectInfo, PreconditionFailed, StorageError, StorageUnreachable, join


def raised(fn) -> BaseException:
    try:
        fn()
    except BaseException as exc:  # the exception a real call raises
        return exc
    raise AssertionError("expected an exception")


def unreachable_arrow_s3() -> OSError:
    fs = pafs.S3FileSystem(endpoint_override="127.0.0.1:9", scheme="http", connect_timeout=1, request_timeout=1, access_key="a", secret_key="b",
                           region="us-east-1", retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))
    return raised(lambda: fs.open_input_stream("bucket/key"))


def corrupt_parquet_page() -> OSError:
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": [f"row {i} " * 30 for i in range(500)]}), buf)
    data = bytearray(buf.getvalue())
    column = pq.ParquetFile(io.BytesIO(bytes(data))).metadata.row_group(0).column(0)
    page = column.dictionary_page_offset or column.data_page_offset
    data[page + 3 : page + 19] = b"\xff" * 16
    return raised(lambda: pq.ParquetFile(io.BytesIO(bytes(data))).read())


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


def test_transient_and_deterministic_errors_are_told_apart():
    from prefect.task_engine import TaskRunTimeoutError

    transient = [
        unreachable_arrow_s3(),
        EndpointConnectionError(endpoint_url="http://127.0.0.1:9"),
        StorageUnreachable("storage unreachable"),
        client_error("SlowDown", 503),
        client_error("InternalError", 500),
        ConnectionResetError(104, "Connection reset by peer"),
        type("KilledWorker", (Exception,), {})("worker lost"),
    ]
    deterministic = [
        corrupt_parquet_page(),
        raised(lambda: open("/nonexistent/input.jsonl", "rb")),
        client_error("AccessDenied", 403),
        client_error("NoSuchKey", 404),
        PreconditionFailed("etag changed"),
        StorageError("bucket does not exist"),
        raised(lambda: __import__("json").loads("[" * 100_000)),
        ValueError("cannot tell the format"),
        TaskRunTimeoutError("task exceeded its time limit"),
    ]
    assert [is_transient(e) for e in transient] == [True] * len(transient), transient
    assert [is_transient(e) for e in deterministic] == [False] * len(deterministic), deterministic


def test_retry_condition_reads_the_failed_state():
    from prefect.states import Failed

    from flows.retries import retry_if_transient

    assert retry_if_transient(None, None, Failed(data=unreachable_arrow_s3())) is True
    assert retry_if_transient(None, None, Failed(data=corrupt_parquet_page())) is False
    assert retry_if_transient(None, None, Failed(message="no exception attached")) is False


def test_select_sources_skips_what_is_not_an_input_and_says_why():
    objects = [ObjectInfo(f"s3://b/raw/{name}", size, "e") for name, size in
               [("a.warc.gz", 10), ("_SUCCESS", 0), ("README.md", 5), ("sub/", 0), ("b.jsonl", 3), ("c.parquet.crc", 8)]]
    readable, skipped = select_sources(objects)
    assert [o.uri.rsplit("/", 1)[-1] for o in readable] == ["a.warc.gz", "b.jsonl"]
    assert [(s["source"].split("/raw/")[1], s["reason"]) for s in skipped] == [
        ("_SUCCESS", "unknown_format"), ("README.md", "unknown_format"), ("sub/", "folder_marker"), ("c.parquet.crc", "unknown_format")]
    forced, skipped = select_sources(objects, "jsonl")
    assert len(forced) == 5 and [s["reason"] for s in skipped] == ["folder_marker"]


def test_a_deterministic_failure_is_not_retried(prefect_harness, bucket):
    from prefect import flow

    from flows.ingest import ingest_source

    gone = ObjectInfo(join(bucket, "raw", "gone.jsonl"), 100, "0123")  # listed, then deleted

    @flow
    def one_input() -> tuple:
        state = ingest_source(gone, join(bucket, "datasets", "d"), "v-test", ReadOptions(), 1 << 20, "", return_state=True)
        return state.is_failed(), state.state_details.task_run_id

    failed, task_run_id = one_input()
    assert failed
    assert final_task_run(task_run_id).run_count == 1, "a missing object was retried"


def final_task_run(task_run_id, timeout: float = 60.0):
    """The task run as the server has it once its final state arrived (task states reach the
    server as events, shortly after the run)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            try:
                task_run = client.read_task_run(task_run_id)
                if task_run.state is not None and task_run.state.is_final():
                    return task_run
            except ObjectNotFound:
                pass
            assert time.monotonic() < deadline, "the task run's final state never reached the server"
            time.sleep(0.2)

