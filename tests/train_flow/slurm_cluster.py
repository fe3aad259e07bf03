"""A real single-node Slurm cluster for tests: munged, slurmctld and slurmd in the foreground
as child processes, every path (state, spool, logs, munge socket and key) under one folder,
config rendered from infra/slurm/slurm.conf.j2 for this host."""

from __future__ import annotations

import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import jinja2
import psutil

CONF_TEMPLATE = Path(__file__).resolve().parents[2] / "infra" / "slurm" / "slurm.conf.j2"
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "sinfo")


def slurm_missing() -> str | None:
    """Why the cluster cannot start here, or None."""
    if os.geteuid() != 0:
        return "the Slurm test cluster needs root (slurmd runs jobs as their user)"
    absent = [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if absent:
        return f"Slurm/munge not installed ({', '.join(absent)} missing): run infra/slurm/install.sh"
    return None


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    partition = "debug"

    def __init__(self, root: Path):
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.procs: list[subprocess.Popen] = []

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def render(self) -> str:
        cpus = os.cpu_count() or 1
        memory_mb = int(psutil.virtual_memory().total / 2**20 * 0.8)
        return jinja2.Template(CONF_TEMPLATE.read_text(), undefined=jinja2.StrictUndefined).render(
            cluster_name="tokenmill",
            host=socket.gethostname().split(".")[0],
            user=pwd.getpwuid(os.getuid()).pw_name,
            ctld_port=_free_port(),
            slurmd_port=_free_port(),
            first_job_id=random.randrange(1, 1_000_000),
            munge_socket=self.munge_socket,
            root=self.root,
            cpus=cpus,
            memory_mb=memory_mb,
            partition=self.partition,
        )

    def start(self, timeout_s: float = 60.0) -> None:
        for sub in ("state", "spool", "log", "run", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self.conf.write_text(self.render())
        self._spawn([_binary("munged"), "--foreground", "--force", f"--key-file={key}", f"--socket={self.munge_socket}",
                     f"--pid-file={self.root / 'munge' / 'munged.pid'}", f"--log-file={self.root / 'log' / 'munged.log'}",
                     f"--seed-file={self.root / 'munge' / 'munged.seed'}"], "munged")  # fmt: skip
        self._wait(lambda: self.munge_socket.exists(), timeout_s, "munged socket")
        self._spawn([_binary("slurmctld"), "-D", "-i", "-f", str(self.conf)], "slurmctld")
        self._spawn([_binary("slurmd"), "-D", "-f", str(self.conf)], "slurmd")
        self._wait(self._node_idle, timeout_s, "the node to become idle")

    def _spawn(self, argv: list[str], name: str) -> None:
        log = open(self.root / "log" / f"{name}.stdout", "ab")
        self.procs.append(
            subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **self.env},
            )
        )
        log.close()

    def _node_idle(self) -> bool:
        for proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}; see {self.root / 'log'}")
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env={**os.environ, **self.env})
        return out.returncode == 0 and out.stdout.strip() == "idle"

    @staticmethod
    def _wait(check, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(0.3)

    def stop(self) -> None:
        for proc in reversed(self.procs):  # slurmd, slurmctld, then munged
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
