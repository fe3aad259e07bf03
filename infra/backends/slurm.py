"""Run a job on a Slurm cluster: an sbatch script rendered from infra/slurm/train.sbatch.j2
(srun + torchrun per node), state from `scontrol show job` (falling back to `sacct` once the
controller has forgotten the job), scancel to stop it.

The run directory must be on a filesystem that every node and the submitting host share:
the log, metrics and checkpoints are read from there.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import jinja2

from infra.backends.base import JOB_ID_ENV, JobBackend, JobHandle, JobSpec, JobState, LogChunk, Phase, read_log_file

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "slurm"

# Slurm job states (scontrol's JobState, sacct's State) by what they mean for the flow.
_PENDING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED", "STOPPED"}
_RUNNING = {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING"}
_CANCELLED = {"CANCELLED"}
_SUCCEEDED = {"COMPLETED"}


class SlurmError(RuntimeError):
    pass


def render_sbatch(spec: JobSpec, *, python: str = sys.executable, partition: str | None = None) -> str:
    if any(ch.isspace() for ch in spec.run_dir):
        raise ValueError(f"#SBATCH directives cannot carry a run directory with whitespace: {spec.run_dir!r}")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR), undefined=jinja2.StrictUndefined, keep_trailing_newline=True
    )
    return env.get_template("train.sbatch.j2").render(
        name=spec.name,
        nodes=spec.nodes,
        procs_per_node=spec.procs_per_node,
        cpus_per_node=spec.cpus_per_node,
        gpus_per_node=spec.gpus_per_node,
        memory_mb=int(spec.memory_gb * 1024) if spec.memory_gb else None,
        time_limit_min=-(-spec.time_limit_s // 60) if spec.time_limit_s else None,
        partition=partition,
        run_dir=spec.run_dir,
        log_path=str(Path(spec.run_dir) / "logs" / f"{spec.name}-%j.log"),
        python=shlex.quote(python),
        command=" ".join(shlex.quote(arg) for arg in spec.command),
        job_id_env=JOB_ID_ENV,
    )


def parse_scontrol(line: str) -> dict[str, str]:
    """`scontrol show job -o` prints one line of Key=Value pairs (values may not contain spaces
    except in a few fields we do not read)."""
    out = {}
    for token in line.split():
        key, sep, value = token.partition("=")
        if sep:
            out.setdefault(key, value)
    return out


def state_from(slurm_state: str, exit_code: str, reason: str = "") -> JobState:
    """Map Slurm's state and `exit:signal` code to a JobState."""
    slurm_state = slurm_state.split()[0].rstrip("+") if slurm_state else "UNKNOWN"
    code_s, _, signal_s = (exit_code or "").partition(":")
    code = int(code_s) if code_s.isdigit() else None
    if signal_s.isdigit() and int(signal_s) and not code:
        code = -int(signal_s)
    reason = "" if reason in ("None", "(null)") else reason
    if slurm_state in _PENDING:
        return JobState(Phase.PENDING, None, reason)
    if slurm_state in _RUNNING:
        return JobState(Phase.RUNNING)
    if slurm_state in _SUCCEEDED:
        return JobState(Phase.SUCCEEDED, code)
    if slurm_state in _CANCELLED:
        return JobState(Phase.CANCELLED, code, "cancelled")
    return JobState(Phase.FAILED, code, f"slurm state {slurm_state}" + (f" ({reason})" if reason else ""))


class SlurmBackend(JobBackend):
    name = "slurm"

    def __init__(
        self,
        *,
        slurm_conf: str | None = None,
        partition: str | None = None,
        python: str = sys.executable,
        cancel_timeout_s: float = 60.0,
    ):
        self.slurm_conf = slurm_conf
        self.partition = partition
        self.python = python
        self.cancel_timeout_s = cancel_timeout_s

    def _run(self, argv: list[str], *, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
        full_env = {**os.environ, **(env or {})}
        if self.slurm_conf:
            full_env["SLURM_CONF"] = self.slurm_conf
        result = subprocess.run(argv, capture_output=True, text=True, env=full_env, timeout=60)
        if check and result.returncode != 0:
            raise SlurmError(f"{argv[0]} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def submit(self, spec: JobSpec) -> JobHandle:
        (Path(spec.run_dir) / "logs").mkdir(parents=True, exist_ok=True)
        script = Path(spec.run_dir) / f"{spec.name}.sbatch"
        script.write_text(render_sbatch(spec, python=self.python, partition=self.partition))
        result = self._run(["sbatch", "--parsable", str(script)], env=spec.env)
        job_id = result.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise SlurmError(f"sbatch printed no job id: {result.stdout!r}")
        log_path = str(Path(spec.run_dir) / "logs" / f"{spec.name}-{job_id}.log")
        return JobHandle(backend=self.name, job_id=job_id, run_dir=spec.run_dir, log_path=log_path)

    def status(self, handle: JobHandle) -> JobState:
        shown = self._run(["scontrol", "show", "job", "-o", handle.job_id], check=False)
        if shown.returncode == 0 and shown.stdout.strip():
            fields = parse_scontrol(shown.stdout)
            return state_from(fields.get("JobState", ""), fields.get("ExitCode", ""), fields.get("Reason", ""))
        # The controller drops finished jobs after MinJobAge; accounting (if any) still knows.
        acct = self._run(["sacct", "-n", "-P", "-X", "-j", handle.job_id, "-o", "State,ExitCode"], check=False)
        rows = [r for r in acct.stdout.splitlines() if r.strip()] if acct.returncode == 0 else []
        if rows:
            state, _, exit_code = rows[0].partition("|")
            return state_from(state, exit_code)
        return JobState(Phase.FAILED, None, f"slurm job {handle.job_id} is unknown to the controller and to accounting")

    def logs(self, handle: JobHandle, since: int = 0) -> LogChunk:
        return read_log_file(handle.log_path, since)

    def cancel(self, handle: JobHandle) -> None:
        self._run(["scancel", handle.job_id], check=False)
        deadline = time.monotonic() + self.cancel_timeout_s
        while time.monotonic() < deadline:
            if self.status(handle).finished:
                return
            time.sleep(0.5)
        raise SlurmError(f"slurm job {handle.job_id} still not finished {self.cancel_timeout_s:.0f}s after scancel")
