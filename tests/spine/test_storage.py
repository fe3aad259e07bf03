"""ObjectStore against the real S3 server and local paths: the same calls, the same results."""

from __future__ import annotations

import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.settings import StorageSettings
from pipeline.storage import ObjectStore, PreconditionFailed, StorageError, StorageUnreachable, join


@pytest.fixture(params=["s3", "local"])
def root(request, bucket, tmp_path) -> str:
    return bucket if request.param == "s3" else str(tmp_path / "store")


def test_put_get_list_glob(store, root):
    for key in ["a/x.parquet", "a/y.jsonl.gz", "a/b/z.parquet", "c/w.parquet"]:
        store.put_bytes(join(root, key), key.encode())
    assert store.get_bytes(join(root, "a/b/z.parquet")) == b"a/b/z.parquet"
    assert [o.uri for o in store.list(join(root, "a") + "/")] == [join(root, k) for k in ["a/b/z.parquet", "a/x.parquet", "a/y.jsonl.gz"]]
    assert [o.uri for o in store.glob(join(root, "a/*.parquet"))] == [join(root, "a/x.parquet")]
    assert [o.uri for o in store.glob(join(root, "**.parquet"))] == [join(root, k) for k in ["a/b/z.parquet", "a/x.parquet", "c/w.parquet"]]
    assert len(store.glob(join(root, "a"))) == 3  # a prefix without wildcards lists the "directory"
    info = store.head(join(root, "a/x.parquet"))
    assert info is not None and info.size == len(b"a/x.parquet") and info.etag
    assert store.head(join(root, "nope")) is None


def test_conditional_put_refuses_second_writer(store, root):
    uri = join(root, "manifest/00000001.json")
    store.put_bytes(uri, b"first", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put_bytes(uri, b"second", if_none_match=True)
    assert store.get_bytes(uri) == b"first"


def test_conditional_put_race_has_one_winner(store, bucket):
    uri = join(bucket, "race/obj")
    wins, losses = [], []

    def attempt(i):
        try:
            store.put_bytes(uri, str(i).encode(), if_none_match=True)
            wins.append(i)
        except PreconditionFailed:
            losses.append(i)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(wins) == 1 and len(losses) == 7
    assert store.get_bytes(uri) == str(wins[0]).encode()


def test_pagination_beyond_one_page(store, bucket):
    prefix = join(bucket, "many")
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=8) as pool:  # S3 pages hold 1000 keys
        list(pool.map(lambda i: store.client.put_object(Bucket=bucket[5:], Key=f"many/{i:05d}", Body=b""), range(1005)))
    assert len(store.list(prefix + "/")) == 1005


def test_multipart_upload_and_arrow_io(store, bucket, tmp_path, monkeypatch):
    import pipeline.storage as storage

    monkeypatch.setattr(storage, "MULTIPART_THRESHOLD", 5 * 1024 * 1024)
    monkeypatch.setattr(storage, "MULTIPART_CHUNK", 5 * 1024 * 1024)
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * (12 * 1024 * 1024 // 256))
    info = store.upload_file(big, join(bucket, "big.bin"))
    assert info.size == big.stat().st_size
    assert "-" in info.etag  # multipart ETags carry the part count
    assert b"".join(store.iter_chunks(join(bucket, "big.bin"))) == big.read_bytes()

    table = pa.table({"x": list(range(1000))})
    fs, path = store.arrow_filesystem(join(bucket, "t.parquet"))
    pq.write_table(table, path, filesystem=fs)
    assert pq.read_table(path, filesystem=fs).equals(table)


def test_unreachable_endpoint_is_one_clear_error():
    dead = ObjectStore(StorageSettings(endpoint="http://127.0.0.1:9", access_key="k", secret_key="s"))
    with pytest.raises(StorageUnreachable, match="cannot reach object storage"):
        dead.check("s3://anything")


def test_wrong_credentials_and_missing_bucket(s3_settings, store, bucket):
    with pytest.raises(StorageError, match="does not exist"):
        store.check("s3://no-such-bucket-here")
    bad = ObjectStore(StorageSettings(endpoint=s3_settings.endpoint, access_key="wrong", secret_key="wrong"))
    with pytest.raises(StorageError, match="access denied"):
        bad.check(bucket)


def test_settings_never_show_secrets(s3_settings):
    assert s3_settings.secret_key not in repr(s3_settings)
    assert s3_settings.secret_key not in repr(ObjectStore(s3_settings))


def test_forked_workers_get_their_own_connections(store, bucket):
    """Children of a fork pool must not reuse the parent's pooled sockets (crossed responses)."""
    import multiprocessing

    for i in range(40):
        store.put_bytes(join(bucket, f"fork/{i:03d}"), f"payload-{i}".encode())
    assert store.get_bytes(join(bucket, "fork/000")) == b"payload-0"  # the parent's pool now holds a connection
    with multiprocessing.get_context("fork").Pool(4) as pool:
        results = pool.map(_read_back, [(store.settings, join(bucket, f"fork/{i:03d}")) for i in range(40)] * 8)
    assert results == [f"payload-{i}".encode() for i in range(40)] * 8


def _read_back(args) -> bytes:
    settings, uri = args
    store = ObjectStore(settings)
    assert store.head(uri) is not None
    return store.get_bytes(uri)
