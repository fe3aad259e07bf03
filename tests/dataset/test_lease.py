"""One writer per dataset: the lease object on the real S3 server (and a local folder)."""

from __future__ import annotations

import threading
import time

import pytest

from pipeline.lease import LeaseHeld, LeaseLost, acquire, holding, lease_uri
from pipeline.storage import join


@pytest.fixture(params=["s3", "local"])
def dataset(request, bucket, tmp_path) -> str:
    return join(bucket, "ds") if request.param == "s3" else str(tmp_path / "ds")


def wait_for(condition, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_second_run_is_told_who_holds_the_dataset(store, dataset):
    with holding(dataset, "flow run first-run (1234)", store=store):
        with pytest.raises(LeaseHeld, match=r"refresh of .*ds in progress by flow run first-run \(1234\)"):
            acquire(dataset, "second-run", store=store)
    second = acquire(dataset, "second-run", store=store)  # released: taken at once
    second.release()


def test_waiting_run_takes_over_when_the_holder_finishes(store, dataset):
    first = acquire(dataset, "first", store=store)
    taken = []
    waiter = threading.Thread(target=lambda: taken.append(acquire(dataset, "second", wait_s=60, store=store)))
    waiter.start()
    first.release()
    waiter.join(timeout=90)
    assert taken and taken[0].run == "second"
    taken[0].release()


def test_an_unrenewed_lease_expires_and_the_old_holder_learns_it_lost(store, dataset):
    crashed = acquire(dataset, "crashed", ttl_s=2, store=store)  # never renewed: as if its process died
    taker = wait_for(lambda: _try(dataset, store))
    assert taker.run == "taker"
    with pytest.raises(LeaseLost):
        crashed.check()
    taker.release()


def test_renewals_keep_a_lease_alive(store, dataset):
    with holding(dataset, "long-run", ttl_s=3, store=store) as held:
        renewed_etag = held.etag
        wait_for(lambda: held.etag != renewed_etag)  # the background thread renewed it
        with pytest.raises(LeaseHeld):
            acquire(dataset, "other", store=store)
        held.check()
    assert store.exists(lease_uri(dataset))


def _try(dataset, store):
    try:
        return acquire(dataset, "taker", store=store)
    except LeaseHeld:
        return None
