"""Object storage for the whole project: S3 (AWS, MinIO, SeaweedFS) through boto3 and
pyarrow, and local paths through the same calls.

URIs are `s3://bucket/key` or local paths (`/x/y`, `file:///x/y`). Nothing else in the
project talks to boto3 or constructs a pyarrow filesystem; it asks an `ObjectStore`.
"""

from __future__ import annotations

import functools
import os
import random
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator, TypeVar

import boto3
import pyarrow.fs as pafs
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

from pipeline.settings import StorageSettings

T = TypeVar("T")

MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNK = 16 * 1024 * 1024


class StorageError(RuntimeError):
    """A storage operation failed for a reason worth a one-line message."""


class StorageUnreachable(StorageError):
    """The endpoint did not answer (after retries)."""


class PreconditionFailed(StorageError):
    """A conditional put found the object already there (HTTP 412)."""


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    size: int
    etag: str


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise StorageError(f"not an s3 URI with a bucket: {uri!r}")
    return bucket, key


def local_path(uri: str) -> Path:
    return Path(uri[len("file://") :] if uri.startswith("file://") else uri)


def join(base: str, *parts: str) -> str:
    """Join URI parts with single slashes (SeaweedFS stores `a//b` as `a/b`, so never make one)."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def basename(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def retry(fn: Callable[[], T], *, attempts: int = 6, base_delay: float = 0.5, what: str = "storage call") -> T:
    """Run `fn`, retrying transient storage errors with exponential backoff and jitter.

    boto3 retries each request itself; this outer loop covers whole operations (a pyarrow
    stream, a multipart upload) and a server that is down for longer than boto3 waits.
    """
    for attempt in range(attempts):
        try:
            return fn()
        except (PreconditionFailed, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError):
            raise  # answers, not outages: retrying cannot change them
        except (EndpointConnectionError, ConnectionError, OSError, BotoCoreError, ClientError) as exc:
            if isinstance(exc, ClientError) and not _is_transient(exc):
                raise
            if attempt == attempts - 1:
                if isinstance(exc, (EndpointConnectionError, ConnectionError)):
                    raise StorageUnreachable(f"{what}: storage unreachable ({exc})") from exc
                raise
            time.sleep(base_delay * (2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def _is_transient(exc: ClientError) -> bool:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    code = exc.response.get("Error", {}).get("Code", "")
    return status >= 500 or code in {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable"}


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class ObjectStore:
    """S3 and local files behind one interface. Cheap to construct; clients are made lazily."""

    def __init__(self, settings: StorageSettings | None = None, *, max_attempts: int = 8):
        self.settings = settings or StorageSettings.from_env()
        self._max_attempts = max_attempts

    def __repr__(self) -> str:
        return f"ObjectStore({self.settings!r})"

    # -- clients -----------------------------------------------------------------------

    @property
    def client(self):
        return _boto3_client(self.settings, self._max_attempts)

    @property
    def arrow_s3(self) -> pafs.S3FileSystem:
        return _arrow_s3(self.settings, self._max_attempts)

    def arrow_filesystem(self, uri: str) -> tuple[pafs.FileSystem, str]:
        """A pyarrow filesystem and the path inside it, for pyarrow.parquet / pyarrow.dataset."""
        if is_s3(uri):
            return self.arrow_s3, uri[len("s3://") :]
        return pafs.LocalFileSystem(), str(local_path(uri))

    # -- buckets -----------------------------------------------------------------------

    def ensure_bucket(self, bucket: str) -> None:
        try:
            self.client.head_bucket(Bucket=bucket)
            return
        except EndpointConnectionError as exc:
            raise StorageUnreachable(f"cannot reach {self.settings.endpoint or 'S3'}: {exc}") from exc
        except ClientError as exc:
            if _error_code(exc) not in {"404", "NoSuchBucket", "NotFound"}:
                raise
        try:
            self.client.create_bucket(Bucket=bucket)
        except ClientError as exc:
            if _error_code(exc) not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise

    def check(self, uri: str) -> None:
        """Fail fast with a one-line StorageError when `uri`'s store cannot be used."""
        if not is_s3(uri):
            return
        bucket, _ = split_s3(uri)
        quick = ObjectStore(self.settings, max_attempts=2)
        try:
            quick.client.head_bucket(Bucket=bucket)
        except (EndpointConnectionError, ConnectionError) as exc:
            raise StorageUnreachable(f"cannot reach object storage at {self.settings.endpoint or 'AWS S3'}") from exc
        except NoCredentialsError as exc:
            raise StorageError("no storage credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or run `tokenmill up`)") from exc
        except ClientError as exc:
            code = _error_code(exc)
            if code in {"404", "NoSuchBucket", "NotFound"}:
                raise StorageError(f"bucket {bucket!r} does not exist at {self.settings.endpoint or 'AWS S3'}") from exc
            if code in {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
                raise StorageError(f"access denied to bucket {bucket!r} (check {('AWS_ACCESS_KEY_ID')})") from exc
            raise StorageError(f"bucket {bucket!r}: {code}") from exc

    # -- listing -----------------------------------------------------------------------

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object under `prefix` (a "directory" URI or a key prefix), sorted by URI."""
        if not is_s3(prefix):
            root = local_path(prefix)
            if root.is_file():
                return [self._local_info(root)]
            if not root.exists():
                return []
            return sorted(
                (self._local_info(p) for p in root.rglob("*") if p.is_file() and not p.name.startswith(".tmp-")),
                key=lambda o: o.uri,
            )
        bucket, key = split_s3(prefix)

        def run() -> list[ObjectInfo]:
            out = []
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
                for obj in page.get("Contents", []):
                    out.append(ObjectInfo(f"s3://{bucket}/{obj['Key']}", obj["Size"], obj["ETag"].strip('"')))
            return out

        return sorted(retry(run, what=f"list {prefix}"), key=lambda o: o.uri)

    def glob(self, pattern: str) -> list[ObjectInfo]:
        """Objects matching a shell pattern: `*` and `?` stay within one `/` segment, `**` crosses them.

        A pattern without wildcards names one object or a prefix ("directory")."""
        if not any(ch in pattern for ch in "*?["):
            info = self.head(pattern)
            return [info] if info is not None else self.list(pattern.rstrip("/") + "/")
        first_wild = min(pattern.index(ch) for ch in "*?[" if ch in pattern)
        listing_prefix = pattern[: pattern.rfind("/", 0, first_wild) + 1]
        regex = re.compile(glob_to_regex(pattern))
        return [o for o in self.list(listing_prefix) if regex.match(o.uri)]

    def head(self, uri: str) -> ObjectInfo | None:
        if not is_s3(uri):
            path = local_path(uri)
            return self._local_info(path) if path.is_file() else None
        bucket, key = split_s3(uri)
        try:
            meta = retry(lambda: self.client.head_object(Bucket=bucket, Key=key), what=f"head {uri}")
        except ClientError as exc:
            if _error_code(exc) in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise
        return ObjectInfo(uri, meta["ContentLength"], meta["ETag"].strip('"'))

    def exists(self, uri: str) -> bool:
        return self.head(uri) is not None

    # -- whole objects -----------------------------------------------------------------

    def get_bytes(self, uri: str) -> bytes:
        if not is_s3(uri):
            return local_path(uri).read_bytes()
        bucket, key = split_s3(uri)
        return retry(lambda: self.client.get_object(Bucket=bucket, Key=key)["Body"].read(), what=f"get {uri}")

    def put_bytes(self, uri: str, data: bytes, *, if_none_match: bool = False, content_type: str | None = None) -> ObjectInfo:
        """Write an object. With `if_none_match`, only if no object is there yet (else PreconditionFailed)."""
        if not is_s3(uri):
            return self._local_put(local_path(uri), data, exclusive=if_none_match)
        bucket, key = split_s3(uri)
        kwargs: dict = {"Bucket": bucket, "Key": key, "Body": data}
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        if content_type:
            kwargs["ContentType"] = content_type

        def run():
            try:
                return self.client.put_object(**kwargs)
            except ClientError as exc:
                if _error_code(exc) in {"PreconditionFailed", "412", "ConditionalRequestConflict"}:
                    raise PreconditionFailed(f"{uri} already exists") from exc
                raise

        resp = retry(run, what=f"put {uri}")
        return ObjectInfo(uri, len(data), resp["ETag"].strip('"'))

    def upload_file(self, local: str | Path, uri: str) -> ObjectInfo:
        """Upload a local file; multipart above MULTIPART_THRESHOLD."""
        if not is_s3(uri):
            dest = local_path(uri)
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".tmp-{dest.name}-{os.getpid()}")
            shutil.copyfile(local, tmp)
            os.replace(tmp, dest)
            return self._local_info(dest)
        bucket, key = split_s3(uri)
        config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_CHUNK)
        retry(lambda: self.client.upload_file(str(local), bucket, key, Config=config), what=f"upload {uri}")
        info = self.head(uri)
        assert info is not None
        return info

    def download_file(self, uri: str, local: str | Path) -> Path:
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        if not is_s3(uri):
            shutil.copyfile(local_path(uri), local)
            return local
        bucket, key = split_s3(uri)
        retry(lambda: self.client.download_file(bucket, key, str(local)), what=f"download {uri}")
        return local

    def delete(self, uri: str) -> None:
        if not is_s3(uri):
            local_path(uri).unlink(missing_ok=True)
            return
        bucket, key = split_s3(uri)
        retry(lambda: self.client.delete_object(Bucket=bucket, Key=key), what=f"delete {uri}")

    def delete_prefix(self, prefix: str) -> int:
        objects = self.list(prefix)
        for obj in objects:
            self.delete(obj.uri)
        return len(objects)

    # -- streams -----------------------------------------------------------------------

    def open_read(self, uri: str) -> IO[bytes]:
        """A buffered binary stream over the whole object (not decompressed)."""
        fs, path = self.arrow_filesystem(uri)
        return retry(lambda: fs.open_input_stream(path, compression=None, buffer_size=1 << 20), what=f"open {uri}")

    def open_random_access(self, uri: str):
        """A seekable pyarrow file (Parquet footers, byte ranges)."""
        fs, path = self.arrow_filesystem(uri)
        return retry(lambda: fs.open_input_file(path), what=f"open {uri}")

    def iter_chunks(self, uri: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        with self.open_read(uri) as stream:
            while chunk := stream.read(chunk_size):
                yield chunk

    # -- local helpers -----------------------------------------------------------------

    @staticmethod
    def _local_info(path: Path) -> ObjectInfo:
        st = path.stat()
        return ObjectInfo(str(path), st.st_size, f"{st.st_size:x}-{st.st_mtime_ns:x}")

    def _local_put(self, path: Path, data: bytes, *, exclusive: bool) -> ObjectInfo:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        if exclusive:
            try:
                os.link(tmp, path)  # atomic create-if-absent
            except FileExistsError as exc:
                raise PreconditionFailed(f"{path} already exists") from exc
            finally:
                os.unlink(tmp)
        else:
            os.replace(tmp, path)
        return self._local_info(path)


_client_lock = threading.Lock()


@functools.lru_cache(maxsize=32)
def _boto3_client(s: StorageSettings, max_attempts: int):
    """One client per settings per process: making one loads botocore's JSON models (~0.25 s),
    and clients are thread-safe once made (sessions are not, hence the lock)."""
    config = Config(
        region_name=s.region,
        retries={"max_attempts": max_attempts, "mode": "standard"},
        s3={"addressing_style": "path"} if s.endpoint else {},
        connect_timeout=5,
        read_timeout=60,
        # Checksums on every PUT are newer than several S3-compatible servers.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    with _client_lock:
        return boto3.session.Session().client(
            "s3",
            endpoint_url=s.endpoint,
            aws_access_key_id=s.access_key,
            aws_secret_access_key=s.secret_key,
            aws_session_token=s.session_token,
            config=config,
        )


@functools.lru_cache(maxsize=32)
def _arrow_s3(s: StorageSettings, max_attempts: int) -> pafs.S3FileSystem:
    kwargs: dict = dict(
        region=s.region,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=max_attempts),
        connect_timeout=5,
        request_timeout=60,
    )
    if s.access_key:
        kwargs.update(access_key=s.access_key, secret_key=s.secret_key, session_token=s.session_token)
    if s.endpoint:
        scheme, _, host = s.endpoint.partition("://")
        kwargs.update(scheme=scheme, endpoint_override=host.rstrip("/"))
    return pafs.S3FileSystem(**kwargs)


def _forget_clients_after_fork() -> None:
    """A forked child must not share the parent's pooled connections: responses would cross
    between processes. It makes its own clients on first use."""
    global _client_lock
    _client_lock = threading.Lock()
    _boto3_client.cache_clear()
    _arrow_s3.cache_clear()


os.register_at_fork(after_in_child=_forget_clients_after_fork)


def glob_to_regex(pattern: str) -> str:
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            out.append("[" + pattern[i + 1 : end].replace("!", "^", 1) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "^" + "".join(out) + "$"
