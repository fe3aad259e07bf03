"""Object storage for the whole project: S3 (AWS, MinIO, SeaweedFS) through boto3 and
pyarrow, and local paths through the same calls.

URIs are `s3://bucket/key` or local paths (`/x/y`, `file:///x/y`). Nothing else in the
project talks to boto3 or constructs a pyarrow filesystem; it asks an `ObjectStore`.
"""

from __future__ import annotations

import fcntl
import functools
import io
import os
import random
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
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
    """A conditional write or read did not hold (HTTP 412): the object is already there
    (If-None-Match) or is no longer the version named (If-Match)."""


class SourceChanged(StorageError):
    """An input object is no longer the one a plan recorded (its ETag changed, or it is gone).
    Recurs on every retry: re-plan to read the new content under a new version."""


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
    # 409 ConditionalRequestConflict: another conditional write to the key is in flight; the
    # retry then gets the real answer (success or 412).
    return status >= 500 or code in {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "ConditionalRequestConflict"}


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
                (self._local_info(p) for p in root.rglob("*") if p.is_file() and not p.name.startswith((".tmp-", ".lock-"))),
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
        meta = self._head_s3(uri)
        return None if meta is None else ObjectInfo(uri, meta["ContentLength"], meta["ETag"].strip('"'))

    def _head_s3(self, uri: str) -> dict | None:
        bucket, key = split_s3(uri)
        try:
            return retry(lambda: self.client.head_object(Bucket=bucket, Key=key), what=f"head {uri}")
        except ClientError as exc:
            if _error_code(exc) in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise

    def exists(self, uri: str) -> bool:
        return self.head(uri) is not None

    # -- whole objects -----------------------------------------------------------------

    def get_bytes(self, uri: str) -> bytes:
        if not is_s3(uri):
            return local_path(uri).read_bytes()
        bucket, key = split_s3(uri)
        return retry(lambda: self.client.get_object(Bucket=bucket, Key=key)["Body"].read(), what=f"get {uri}")

    def put_bytes(self, uri: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None, content_type: str | None = None) -> ObjectInfo:
        """Write an object. With `if_none_match`, only if no object is there yet; with
        `if_match`, only if the object there still has that ETag (else PreconditionFailed)."""
        if not is_s3(uri):
            return self._local_put(local_path(uri), data, exclusive=if_none_match, if_match=if_match)
        bucket, key = split_s3(uri)
        kwargs: dict = {"Bucket": bucket, "Key": key, "Body": data}
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        if if_match is not None:
            kwargs["IfMatch"] = _quoted(if_match)
        if content_type:
            kwargs["ContentType"] = content_type

        def run():
            try:
                return self.client.put_object(**kwargs)
            except ClientError as exc:
                if _error_code(exc) in {"PreconditionFailed", "412"}:
                    raise PreconditionFailed(f"{uri}: {'already exists' if if_none_match else 'changed since it was read'}") from exc
                if if_match is not None and _error_code(exc) in {"NoSuchKey", "404"}:
                    raise PreconditionFailed(f"{uri}: gone since it was read") from exc
                raise

        resp = retry(run, what=f"put {uri}")
        return ObjectInfo(uri, len(data), resp["ETag"].strip('"'))

    def get_with_etag(self, uri: str) -> tuple[bytes, str] | None:
        """An object's bytes and the ETag of exactly those bytes (for a conditional rewrite), or None."""
        if not is_s3(uri):
            path = local_path(uri)
            try:
                return path.read_bytes(), self._local_info(path).etag
            except FileNotFoundError:
                return None
        bucket, key = split_s3(uri)
        try:
            resp = retry(lambda: self.client.get_object(Bucket=bucket, Key=key), what=f"get {uri}")
            return resp["Body"].read(), resp["ETag"].strip('"')
        except ClientError as exc:
            if _error_code(exc) in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise

    def age(self, uri: str) -> tuple[ObjectInfo, float] | None:
        """An object and the seconds since it was last written, by the server's own clock
        (S3's Date header against Last-Modified), so leases expire right on skewed clients."""
        if not is_s3(uri):
            path = local_path(uri)
            if not path.is_file():
                return None
            return self._local_info(path), max(0.0, time.time() - path.stat().st_mtime)
        meta = self._head_s3(uri)
        if meta is None:
            return None
        server_now = parsedate_to_datetime(meta["ResponseMetadata"]["HTTPHeaders"]["date"])
        info = ObjectInfo(uri, meta["ContentLength"], meta["ETag"].strip('"'))
        return info, max(0.0, (server_now - meta["LastModified"]).total_seconds())

    def copy(self, source: str, dest: str) -> ObjectInfo:
        """Server-side copy (no bytes through this process on S3)."""
        if not (is_s3(source) and is_s3(dest)):
            return self.put_bytes(dest, self.get_bytes(source))
        src_bucket, src_key = split_s3(source)
        bucket, key = split_s3(dest)
        retry(lambda: self.client.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": src_bucket, "Key": src_key}), what=f"copy {source}")
        info = self.head(dest)
        assert info is not None
        return info

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

    def delete_many(self, uris: list[str]) -> int:
        """Delete objects, a thousand per request on S3 (DeleteObjects); missing ones are fine."""
        by_bucket: dict[str, list[str]] = {}
        for uri in uris:
            if not is_s3(uri):
                local_path(uri).unlink(missing_ok=True)
                continue
            bucket, key = split_s3(uri)
            by_bucket.setdefault(bucket, []).append(key)
        for bucket, keys in by_bucket.items():
            for start in range(0, len(keys), 1000):
                batch = {"Objects": [{"Key": k} for k in keys[start : start + 1000]], "Quiet": True}
                resp = retry(lambda: self.client.delete_objects(Bucket=bucket, Delete=batch), what=f"delete in {bucket}")
                if resp.get("Errors"):
                    first = resp["Errors"][0]
                    raise StorageError(f"could not delete {len(resp['Errors'])} objects in {bucket}, e.g. {first.get('Key')}: {first.get('Code')}")
        return len(uris)

    def delete_prefix(self, prefix: str) -> int:
        return self.delete_many([o.uri for o in self.list(prefix)])

    def list_prefixes(self, prefix: str) -> list[str]:
        """The "subdirectories" directly under `prefix` (ending in `/`), without listing their contents."""
        prefix = prefix.rstrip("/") + "/"
        if not is_s3(prefix):
            root = local_path(prefix)
            return sorted(f"{prefix}{p.name}/" for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        bucket, key = split_s3(prefix)

        def run() -> list[str]:
            out = []
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key, Delimiter="/"):
                out.extend(f"s3://{bucket}/{p['Prefix']}" for p in page.get("CommonPrefixes", []))
            return out

        return sorted(retry(run, what=f"list {prefix}"))

    def pinned(self, etags: dict[str, str]) -> "ObjectStore":
        """This store, but reads of the given objects succeed only while each still has the
        ETag given (If-Match on every request), else SourceChanged: content read under a plan
        is the content the plan recorded."""
        return PinnedStore(self.settings, etags, max_attempts=self._max_attempts)

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

    def _local_put(self, path: Path, data: bytes, *, exclusive: bool, if_match: str | None = None) -> ObjectInfo:
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
        elif if_match is not None:
            # compare-and-swap under a lock file beside the object (local stores serve one host)
            with open(path.parent / f".lock-{path.name}", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not path.is_file() or self._local_info(path).etag != if_match:
                    os.unlink(tmp)
                    raise PreconditionFailed(f"{path} changed since it was read")
                os.replace(tmp, path)
        else:
            os.replace(tmp, path)
        return self._local_info(path)


class PinnedStore(ObjectStore):
    """An ObjectStore whose reads of pinned objects carry If-Match (see `ObjectStore.pinned`)."""

    def __init__(self, settings: StorageSettings, etags: dict[str, str], *, max_attempts: int = 8):
        super().__init__(settings, max_attempts=max_attempts)
        self.etags = dict(etags)

    def _checked_size(self, uri: str) -> int:
        info = self.head(uri)
        if info is None:
            raise SourceChanged(f"{uri} is gone since it was planned")
        if info.etag != self.etags[uri]:
            raise SourceChanged(f"{uri} changed since it was planned (ETag {self.etags[uri]} planned, {info.etag} now); re-run to plan a new version")
        return info.size

    def open_read(self, uri: str) -> IO[bytes]:
        if uri not in self.etags:
            return super().open_read(uri)
        size = self._checked_size(uri)
        if not is_s3(uri):
            return super().open_read(uri)
        return io.BufferedReader(_IfMatchReader(self, uri, self.etags[uri], size, sequential=True), buffer_size=1 << 20)

    def open_random_access(self, uri: str):
        if uri not in self.etags:
            return super().open_random_access(uri)
        size = self._checked_size(uri)
        if not is_s3(uri):
            return super().open_random_access(uri)
        import pyarrow as pa

        return pa.PythonFile(io.BufferedReader(_IfMatchReader(self, uri, self.etags[uri], size, sequential=False), buffer_size=1 << 20), mode="r")

    def get_bytes(self, uri: str) -> bytes:
        if uri not in self.etags:
            return super().get_bytes(uri)
        with self.open_read(uri) as stream:
            return stream.read()


class _IfMatchReader(io.RawIOBase):
    """A seekable raw stream over one S3 object: every GET carries If-Match, and a dropped
    connection resumes at the current offset (Range) instead of failing the whole read.
    `sequential` keeps one open-ended GET streaming; otherwise each read is one ranged GET."""

    def __init__(self, store: ObjectStore, uri: str, etag: str, size: int, *, sequential: bool):
        super().__init__()
        self.store, self.uri, self.etag, self.size, self.sequential = store, uri, etag, size, sequential
        self.bucket, self.key = split_s3(uri)
        self.pos = 0
        self._body = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = {io.SEEK_SET: offset, io.SEEK_CUR: self.pos + offset, io.SEEK_END: self.size + offset}[whence]
        if target != self.pos:
            self._drop_body()
            self.pos = max(0, target)
        return self.pos

    def readinto(self, buffer) -> int:
        want = min(len(buffer), self.size - self.pos)
        if want <= 0:
            return 0
        for attempt in range(6):
            try:
                if self._body is None:
                    end = "" if self.sequential else str(self.pos + want - 1)
                    resp = self.store.client.get_object(Bucket=self.bucket, Key=self.key, IfMatch=_quoted(self.etag), Range=f"bytes={self.pos}-{end}")
                    self._body = resp["Body"]
                data = self._body.read(want)
                if not self.sequential:
                    self._drop_body()
                if not data:
                    raise ConnectionError(f"{self.uri}: stream ended at byte {self.pos} of {self.size}")
                buffer[: len(data)] = data
                self.pos += len(data)
                return len(data)
            except ClientError as exc:
                if _error_code(exc) in {"PreconditionFailed", "412", "NoSuchKey", "404"}:
                    raise SourceChanged(f"{self.uri} changed while it was read (ETag {self.etag} planned); re-run to plan a new version") from exc
                if not _is_transient(exc) or attempt == 5:
                    raise
            except (BotoCoreError, ConnectionError, OSError):
                if attempt == 5:
                    raise
            self._drop_body()
            time.sleep(0.5 * (2**attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    def _drop_body(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None

    def close(self) -> None:
        self._drop_body()
        super().close()


def _quoted(etag: str) -> str:
    return etag if etag.startswith('"') else f'"{etag}"'


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
        max_pool_connections=32,  # parallel GETs (compaction at seal, sealed-version listings) use 16 threads
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
