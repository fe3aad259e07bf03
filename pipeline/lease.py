"""One writer per dataset at a time: a lease object taken and renewed with conditional writes.

`<dataset>/_lease.json` names the run that holds it and for how long (`ttl_s`). It is created
with If-None-Match; a holder renews it (If-Match on the ETag it wrote) every third of the
TTL from a background thread; it expires when not renewed for `ttl_s` seconds, measured by
the storage server's clock (Last-Modified against the response's Date), so a crashed holder
frees the dataset without anyone's clock mattering. Taking over an expired or released lease
is a conditional write on the ETag read, so exactly one contender wins.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from typing import Iterator

from pipeline.dataset import canonical_json
from pipeline.settings import lease_ttl_s
from pipeline.storage import ObjectStore, PreconditionFailed, StorageError, join

POLL_S = 5.0


class LeaseHeld(StorageError):
    """Another run holds the dataset."""


class LeaseLost(StorageError):
    """This run's lease was taken over (it was not renewed in time): stop before writing more."""


def lease_uri(dataset_uri: str) -> str:
    return join(dataset_uri, "_lease.json")


def default_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Lease:
    def __init__(self, store: ObjectStore, uri: str, run: str, ttl_s: int, etag: str, body: dict):
        self.store, self.uri, self.run, self.ttl_s = store, uri, run, ttl_s
        self.etag, self.body = etag, body
        self.lost: LeaseLost | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def renew(self) -> None:
        with self._lock:
            body = {**self.body, "renewed_at": time.time()}
            try:
                self.etag = self.store.put_bytes(self.uri, canonical_json(body).encode(), if_match=self.etag, content_type="application/json").etag
            except PreconditionFailed as exc:
                self.lost = LeaseLost(f"lease {self.uri} of run {self.run} was taken over (not renewed within {self.ttl_s} s)")
                raise self.lost from exc

    def check(self) -> None:
        """Raise LeaseLost if a renewal failed: call before a step that must not run twice (sealing)."""
        if self.lost is not None:
            raise self.lost
        self.renew()

    def start_renewing(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.ttl_s / 3):
                try:
                    self.renew()
                except LeaseLost:
                    return
                except StorageError:
                    continue  # an outage: try again at the next tick; expiry is ttl_s away

        self._thread = threading.Thread(target=loop, name=f"lease-{self.run}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Mark the lease released (a conditional write of an expired body): the next run
        takes it at once. A lease taken over meanwhile is left alone."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            try:
                self.store.put_bytes(self.uri, canonical_json({**self.body, "released": True}).encode(), if_match=self.etag)
            except (PreconditionFailed, StorageError):
                pass


def acquire(dataset_uri: str, run: str, *, ttl_s: int | None = None, wait_s: float = 0.0, what: str = "refresh", store: ObjectStore | None = None) -> Lease:
    """Take the dataset's lease, waiting up to `wait_s` for the holder to finish; else
    LeaseHeld naming the dataset and the run that holds it. The same `run` may take its own
    lease again (a retried flow run)."""
    store = store or ObjectStore()
    ttl_s = ttl_s or lease_ttl_s()
    uri = lease_uri(dataset_uri)
    deadline = time.monotonic() + wait_s
    while True:
        body = {"run": run, "what": what, "token": uuid.uuid4().hex, "ttl_s": ttl_s, "acquired_at": time.time()}
        data = canonical_json(body).encode()
        try:
            return Lease(store, uri, run, ttl_s, store.put_bytes(uri, data, if_none_match=True, content_type="application/json").etag, body)
        except PreconditionFailed:
            pass
        aged, current = store.age(uri), store.get_with_etag(uri)
        if aged is None or current is None or aged[0].etag != current[1]:
            continue  # changed between the two reads: look again
        age, held = aged[1], json.loads(current[0])
        if held.get("released") or age > held.get("ttl_s", ttl_s) or held.get("run") == run:
            try:
                return Lease(store, uri, run, ttl_s, store.put_bytes(uri, data, if_match=current[1], content_type="application/json").etag, body)
            except PreconditionFailed:
                continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            expires = max(0, int(held.get("ttl_s", ttl_s) - age))
            raise LeaseHeld(f"{held.get('what', 'refresh')} of {dataset_uri} in progress by {held.get('run')} (lease expires in {expires} s unless renewed)")
        time.sleep(min(POLL_S, remaining))


@contextlib.contextmanager
def holding(dataset_uri: str, run: str | None = None, *, ttl_s: int | None = None, wait_s: float = 0.0, what: str = "refresh",
            store: ObjectStore | None = None) -> Iterator[Lease]:  # fmt: skip
    """Hold the lease (renewed in the background) for the duration of the block."""
    lease = acquire(dataset_uri, run or default_holder(), ttl_s=ttl_s, wait_s=wait_s, what=what, store=store)
    lease.start_renewing()
    try:
        yield lease
    finally:
        lease.release()
