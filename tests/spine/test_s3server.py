"""The embedded SeaweedFS server behaves like S3 where it matters to us."""

from __future__ import annotations

import psutil
import pytest
from botocore.exceptions import ClientError

from pipeline.s3server import start_s3_server


@pytest.fixture()
def own_server(tmp_path, s3_server):
    if s3_server is None:
        pytest.skip("an external S3 endpoint is configured; no embedded server to check")
    server = start_s3_server(tmp_path / "s3")
    yield server
    server.stop()


def test_strict_bucket_semantics_loopback_and_restart(own_server, tmp_path):
    store = own_server.store()
    with pytest.raises(ClientError, match="NoSuchBucket"):  # no auto-created buckets
        store.client.put_object(Bucket="never-created", Key="k", Body=b"x")
    store.ensure_bucket("keep")
    store.put_bytes("s3://keep/a/b.txt", b"persisted")
    with pytest.raises(ClientError, match="BucketNotEmpty"):  # non-empty buckets are not deleted
        store.client.delete_bucket(Bucket="keep")
    listening = {c.laddr.ip for c in psutil.Process(own_server.process.pid).net_connections() if c.status == psutil.CONN_LISTEN}
    assert listening and listening <= {"127.0.0.1"}, f"listens beyond loopback: {listening}"
    assert any((tmp_path / "s3" / "logs").iterdir()), "logs are kept under the server's folder"

    own_server.restart()
    assert own_server.store().get_bytes("s3://keep/a/b.txt") == b"persisted"
    own_server.stop()
    assert not own_server.running()
    # the same folder starts again with the same credentials and data
    again = start_s3_server(tmp_path / "s3")
    try:
        assert again.settings.access_key == own_server.settings.access_key
        assert again.store().get_bytes("s3://keep/a/b.txt") == b"persisted"
    finally:
        again.stop()
