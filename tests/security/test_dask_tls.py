"""The Dask TLS option of infra/k8s-dask-tls, for real: certificates made with the commands its
README gives, a scheduler and a worker started with exactly the settings of its ConfigMap
(paths moved to a temporary folder); a client holding the certificate computes, a plain
tcp:// client is refused."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import REPO

OVERLAY = REPO / "infra" / "k8s-dask-tls"
DASK = str(Path(sys.executable).parent / "dask")
MOUNT = "/etc/dask-tls"

CLIENT = """
import sys
from distributed import Client
with Client(sys.argv[1], timeout=60) as client:
    assert client.submit(lambda x: x + 1, 1).result() == 2
    print("workers:", len(client.scheduler_info()["workers"]))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    """ca.crt, tls.crt, tls.key made by the README's openssl commands (the kubectl line left out)."""
    folder = tmp_path_factory.mktemp("dask-tls")
    block = re.search(r"```sh\n(.*?)```", (OVERLAY / "README.md").read_text(), re.DOTALL).group(1)
    script = "\n".join(line for line in re.sub(r"\\\n\s*", " ", block).splitlines() if not line.startswith("kubectl "))
    subprocess.run(["sh", "-e", "-c", script], cwd=folder, check=True, capture_output=True, timeout=120)
    assert all((folder / name).exists() for name in ("ca.crt", "tls.crt", "tls.key"))
    return folder


def tls_env(certs: Path) -> dict[str, str]:
    (settings,) = [d for d in yaml.safe_load_all((OVERLAY / "settings.yaml").read_text()) if d]
    env = {key: value.replace(MOUNT, str(certs)) for key, value in settings["data"].items()}
    assert all(key.startswith("DASK_DISTRIBUTED__COMM__") for key in env)
    return {**os.environ, **env}


def test_scheduler_workers_and_client_speak_tls_only(certs, tmp_path):
    env = tls_env(certs)
    port = free_port()
    address = f"tls://127.0.0.1:{port}"
    procs = []
    try:
        logs = open(tmp_path / "dask.log", "wb")
        procs.append(subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                                      env=env, stdout=logs, stderr=subprocess.STDOUT))  # fmt: skip
        procs.append(subprocess.Popen([DASK, "worker", address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard",
                                       "--local-directory", str(tmp_path / "worker")],
                                      env=env, stdout=logs, stderr=subprocess.STDOUT))  # fmt: skip
        ok = subprocess.run([sys.executable, "-c", CLIENT, address], env=env, capture_output=True, text=True, timeout=180)
        assert ok.returncode == 0, ok.stderr[-3000:] + (tmp_path / "dask.log").read_text()[-3000:]
        assert "workers: 1" in ok.stdout
        plain_env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
        plain = subprocess.run([sys.executable, "-c", CLIENT.replace("timeout=60", "timeout=5"), f"tcp://127.0.0.1:{port}"],
                               env=plain_env, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert plain.returncode != 0, "a client without TLS got in"
        no_cert = subprocess.run([sys.executable, "-c", CLIENT.replace("timeout=60", "timeout=5"), address],
                                 env={**plain_env, "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(certs / "ca.crt")},
                                 capture_output=True, text=True, timeout=120)  # fmt: skip
        assert no_cert.returncode != 0, "a client without a certificate got in"
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
