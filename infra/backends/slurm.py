"""Run a job on a Slurm cluster: sbatch with every setting as a command-line option (srun +
torchrun per node), state from `scontrol show job` (falling back to `sacct` once the
controller has forgotten the job), scancel to stop it.

No user value ever becomes shell text: the batch script is the same for every job except
validated integers (node, rank and CPU counts); the job name, partition, paths and the
names of the variables to export are sbatch options in an argv list, and the interpreter and
training command reach the script as its arguments. The job gets only the variables it needs
(`--export` with the names of JobSpec.env plus PATH and locale), never the whole environment
of the flow process.

The run directory must be on a filesystem that every node and the submitting host share:
the log, metrics and checkpoints are read from there.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

from infra.backends import rendezvous_port
from infra.backends.base import JOB_ID_ENV, BackendUnavailable, JobBackend, JobHandle, JobSpec, JobState, LogChunk, Phase, read_log_file
from pipeline import names

# Slurm job states (scontrol's JobState, sacct's State) by what they mean for the flow.
_PENDING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED", "STOPPED"}
_RUNNING = {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING"}
_CANCELLED = {"CANCELLED"}
_SUCCEEDED = {"COMPLETED"}
# Ended by the clock or by the scheduler, not by the job: the trainer checkpointed on SIGTERM
# (`--signal`), and the flow continues the run in a new job.
_TIME_LIMIT = {"TIMEOUT", "DEADLINE", "PREEMPTED"}
# Pending reasons that waiting will not cure (slurm.conf limits, bad options, a dependency that
# failed): the job would sit in the queue until the queue timeout. `squeue --help` / the
# "JOB REASON CODES" section of squeue(1) list them. Not here: PartitionDown, PartitionInactive
# and JobHeldAdmin, which an administrator sets for maintenance and lifts again (the queue
# timeout bounds the wait).
NEVER_STARTS = {
    "BadConstraints", "DependencyNeverSatisfied", "InvalidAccount", "InvalidQOS", "PartitionConfig",
    "PartitionNodeLimit", "PartitionTimeLimit",
    "QOSMaxWallDurationPerJobLimit", "QOSMaxNodePerJobLimit", "QOSMaxCpuPerJobLimit", "QOSMaxGRESPerJob",
    "AssocMaxWallDurationPerJobLimit", "AssocMaxNodesPerJobLimit", "AssocMaxCpuPerJobLimit",
}  # fmt: skip

# Seconds before the time limit at which every job step gets SIGTERM, so the trainer can write
# a checkpoint (Slurm checks about once a minute, so the signal may come up to 60 s earlier).
DEFAULT_SIGNAL_GRACE_S = 180
# What a job needs from the submitting environment besides JobSpec.env. With a `--export`
# list Slurm also loads the user's login environment on the node (as --get-user-env does).
RUNTIME_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")

BATCH_SCRIPT = """\
#!/bin/bash
# tokenmill training job, written by infra/backends/slurm.py. Only validated integers and
# tokenmill's own port picker are filled in here: the job name, partition, paths and
# environment are sbatch options, and the interpreter and training command are this
# script's arguments ($1, then the rest).
# One task per node; each runs torchrun, which starts {procs_per_node} rank(s) and meets the
# other nodes through a c10d rendezvous on the first node.
set -euo pipefail
python=$1
shift

head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
# The batch script runs on the head node: pick a port free here, outside the ephemeral range,
# starting from one derived from the job id (infra/backends/rendezvous_port.py).
rdzv_port=$("$python" - "$SLURM_JOB_ID" <<'PICK_RENDEZVOUS_PORT'
{pick_port}
PICK_RENDEZVOUS_PORT
)
echo "tokenmill: c10d rendezvous at $head_node:$rdzv_port"
export {job_id_env}="slurm-$SLURM_JOB_ID"

# --kill-on-bad-exit: one failed node ends the whole step instead of leaving the rest waiting.
# --cpus-per-task is repeated: since Slurm 22.05 srun no longer takes it over from sbatch.
# --export: the ranks get the variables sbatch exported (SLURM_EXPORT_ENV) and the job id.
srun --kill-on-bad-exit=1 --ntasks-per-node=1 --cpus-per-task={cpus_per_task} \\
  --export="$SLURM_EXPORT_ENV,{job_id_env}" \\
  "$python" -m torch.distributed.run \\
    --nnodes {nodes} --nproc_per_node {procs_per_node} --max_restarts 0 --shutdown-timeout {grace_s} \\
    --rdzv_id "$SLURM_JOB_ID" --rdzv_backend c10d --rdzv_endpoint "$head_node:$rdzv_port" \\
    "$@"
"""


class SlurmError(RuntimeError):
    pass


def _slurm_path(value: object, field: str) -> str:
    """A path Slurm takes as a filename pattern: `%` and `\\` would be expanded or escaped."""
    path = names.absolute_path(value, field)
    if "%" in path or "\\" in path:
        raise names.InvalidName(f"{field}: {path!r} contains '%' or '\\', which Slurm reads as a filename pattern")
    return path


def signal_grace(value: object) -> int:
    """Seconds of warning before the time limit (sbatch accepts 0..65535)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 65535:
        raise ValueError(f"backend_options.signal_grace_s: {value!r} is not an integer of seconds in 1..65535")
    return value


def cpus_per_task(spec: JobSpec) -> int:
    """The job's one task per node runs every rank of the node: at least one CPU per rank."""
    return spec.cpus_per_node or spec.procs_per_node


def batch_script(spec: JobSpec, signal_grace_s: int = DEFAULT_SIGNAL_GRACE_S) -> str:
    return BATCH_SCRIPT.format(
        pick_port=Path(rendezvous_port.__file__).read_text().strip(),
        nodes=spec.nodes,
        procs_per_node=spec.procs_per_node,
        cpus_per_task=cpus_per_task(spec),
        job_id_env=JOB_ID_ENV,
        grace_s=time_limit_grace(spec, signal_grace_s),
    )


def time_limit_grace(spec: JobSpec, signal_grace_s: int) -> int:
    """Seconds between the SIGTERM before the time limit and the limit: never more than half
    the job's time. torchrun waits as long for its ranks to save (`--shutdown-timeout`; its
    default of 30 s would kill a rank halfway through a large checkpoint)."""
    grace = signal_grace(signal_grace_s)
    if spec.time_limit_s is not None:
        grace = min(grace, math.ceil(spec.time_limit_s / 60) * 30)
    return grace


def exported_names(spec: JobSpec, environ: dict[str, str]) -> list[str]:
    """The variables the job gets: its own (JobSpec.env) and RUNTIME_ENV where set."""
    own = [names.env_name(key, f"env name {key!r}") for key in spec.env]
    return sorted(set(own) | {key for key in RUNTIME_ENV if key in environ})


def sbatch_argv(
    spec: JobSpec,
    script: Path,
    *,
    python: str,
    partition: str | None = None,
    signal_grace_s: int = DEFAULT_SIGNAL_GRACE_S,
    environ: dict[str, str] | None = None,
) -> list[str]:
    """The sbatch command line for `spec`: one argv entry per option, each string validated
    (JobSpec itself guarantees its counts are integers and its command a list of strings)."""
    name = names.segment(spec.name, "name")
    run_dir = _slurm_path(spec.run_dir, "run_dir")
    argv = [
        "sbatch",
        "--parsable",
        f"--job-name={name}",
        f"--nodes={spec.nodes}",
        "--ntasks-per-node=1",
        f"--cpus-per-task={cpus_per_task(spec)}",
        f"--output={Path(run_dir) / 'logs' / f'{name}-%j.log'}",
        f"--chdir={run_dir}",
        f"--export={','.join(exported_names(spec, os.environ if environ is None else environ))}",
    ]
    if spec.time_limit_s is not None:
        argv.append(f"--time={math.ceil(spec.time_limit_s / 60)}")
    argv.append(f"--signal=TERM@{time_limit_grace(spec, signal_grace_s)}")
    if spec.gpus_per_node:
        argv.append(f"--gpus-per-node={spec.gpus_per_node}")
    if spec.memory_gb is not None:
        argv.append(f"--mem={math.ceil(spec.memory_gb * 1024)}M")
    if partition is not None:
        argv.append(f"--partition={names.slurm_name(partition, 'backend_options.partition')}")
    return argv + [str(script), names.absolute_path(python, "backend_options.python"), *spec.command]


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
        shown = f"slurm {slurm_state.lower()}" + (f", reason {reason}" if reason else "")
        return JobState(Phase.PENDING, None, shown, never_starts=reason in NEVER_STARTS)
    if slurm_state in _RUNNING:
        return JobState(Phase.RUNNING)
    if slurm_state in _SUCCEEDED:
        return JobState(Phase.SUCCEEDED, code)
    if slurm_state in _CANCELLED:
        return JobState(Phase.CANCELLED, code, "cancelled")
    detail = f"slurm state {slurm_state}" + (f" ({reason})" if reason else "")
    return JobState(Phase.FAILED, code, detail, time_limit=slurm_state in _TIME_LIMIT)


class SlurmBackend(JobBackend):
    name = "slurm"

    def __init__(
        self,
        *,
        slurm_conf: str | None = None,
        partition: str | None = None,
        python: str = sys.executable,
        signal_grace_s: int = DEFAULT_SIGNAL_GRACE_S,
        cancel_timeout_s: float = 60.0,
    ):
        # Options may come from flow parameters (backend_options): checked before any use.
        self.slurm_conf = names.absolute_path(slurm_conf, "backend_options.slurm_conf") if slurm_conf is not None else None
        self.partition = names.slurm_name(partition, "backend_options.partition") if partition is not None else None
        self.python = names.absolute_path(python, "backend_options.python")
        self.signal_grace_s = signal_grace(signal_grace_s)
        self.cancel_timeout_s = cancel_timeout_s

    def _run(self, argv: list[str], *, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
        full_env = {**os.environ, **(env or {})}
        if self.slurm_conf:
            full_env["SLURM_CONF"] = self.slurm_conf
        try:
            result = subprocess.run(argv, capture_output=True, text=True, env=full_env, timeout=60)
        except subprocess.TimeoutExpired as exc:
            raise BackendUnavailable(f"{argv[0]} gave no answer in {exc.timeout:.0f}s") from exc
        if check and result.returncode != 0:
            raise SlurmError(f"{argv[0]} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def submit(self, spec: JobSpec) -> JobHandle:
        script = Path(spec.run_dir) / f"{spec.name}.sbatch"
        argv = sbatch_argv(
            spec,
            script,
            python=self.python,
            partition=self.partition,
            signal_grace_s=self.signal_grace_s,
            environ={**os.environ, **spec.env},
        )
        (Path(spec.run_dir) / "logs").mkdir(parents=True, exist_ok=True)
        script.write_text(batch_script(spec, self.signal_grace_s))
        result = self._run(argv, env=spec.env)
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
        if shown.returncode != 0 and "invalid job id" not in shown.stderr.lower():  # the controller did not answer: unknown, not gone
            raise BackendUnavailable(f"scontrol show job {handle.job_id}: {shown.stderr.strip() or f'exit {shown.returncode}'}")
        # The controller drops finished jobs after MinJobAge; accounting (if any) still knows.
        acct = self._run(["sacct", "-n", "-P", "-X", "-j", handle.job_id, "-o", "State,ExitCode"], check=False)
        if acct.returncode != 0 and "accounting storage is disabled" not in (acct.stdout + acct.stderr).lower():
            raise BackendUnavailable(f"sacct -j {handle.job_id}: {acct.stderr.strip() or f'exit {acct.returncode}'}")
        rows = [r for r in acct.stdout.splitlines() if r.strip()] if acct.returncode == 0 else []
        if rows:
            state, _, exit_code = rows[0].partition("|")
            return state_from(state, exit_code)
        return JobState(Phase.FAILED, None, f"slurm job {handle.job_id} is unknown to the controller and to accounting")

    def logs(self, handle: JobHandle, since: int = 0) -> LogChunk:
        return read_log_file(handle.log_path, since)

    def cancel(self, handle: JobHandle) -> str | None:
        self._run(["scancel", handle.job_id], check=False)
        deadline = time.monotonic() + self.cancel_timeout_s
        while True:
            state = self.status(handle)
            if state.finished:
                return None
            if time.monotonic() >= deadline:
                # Typically COMPLETING: slurmd still waits for a process to exit (KillWait, then
                # UnkillableStepTimeout). Slurm owns it now; the flow goes on instead of failing.
                return f"slurm job {handle.job_id} is still {state.phase.value.lower()} {self.cancel_timeout_s:.0f}s after scancel; Slurm will finish it"
            time.sleep(0.5)
