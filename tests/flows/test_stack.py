"""`tokenmill up` as an operator uses it: the README's commands against the served stack, the
real scheduler starting the cron deployment, dead flow runs marked CRASHED by the server's
automation, Prefect's services running without errors, and SIGTERM stopping every child.

One stack serves the whole module (starting it costs most of a minute on a busy machine).
API calls go through Prefect's own client, which retries what Prefect's client retries
(429/502/503, dropped connections); every wait polls a condition against a deadline.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from pipeline.s3server import free_port

pytestmark = pytest.mark.slow

SAMPLES = ("corpora/warc/whirlwind.warc.gz", "corpora/warc/sample-0000.warc.gz")  # small: the README's refresh stays short
BIG_INPUT = "corpora/warc/wcxb-dev-500.warc.gz"  # 500 pages: a refresh that is still running when it is killed
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass
class Stack:
    url: str
    home: Path
    env: dict
    up: subprocess.Popen
    output: Path
    started: float
    served: float = 0.0

    def client(self):
        from prefect.client.orchestration import SyncPrefectClient

        return SyncPrefectClient(self.url)

    def shell(self, script: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run `script` in bash after `source <home>/env.sh`, as the README tells an operator to."""
        return subprocess.run(["bash", "-c", f"source {self.home}/env.sh && {script}"], env=self.env, capture_output=True, text=True, timeout=timeout)


def wait_for(predicate, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def flow_run_state(stack: Stack, run_id) -> str:
    with stack.client() as client:
        return client.read_flow_run(run_id).state.type.value


def wait_final(stack: Stack, run_id, timeout: float) -> str:
    """The final state type of a flow run; a run that did not complete fails the test with its
    state message and the tail of the serving process's log."""
    state = wait_for(lambda: (s := flow_run_state(stack, run_id)) in FINAL and s, timeout, f"flow run {run_id} to finish", interval=2)
    if state != "COMPLETED":
        with stack.client() as client:
            message = client.read_flow_run(run_id).state.message
        serve_log = (stack.home / "logs" / "serve.log").read_text()[-4000:]
        raise AssertionError(f"flow run {run_id} ended {state}: {message}\n--- serve.log ---\n{serve_log}")
    return state


@pytest.fixture(scope="module")
def stack(tmp_path_factory, shared):
    root = tmp_path_factory.mktemp("stack")
    samples = root / "samples"
    samples.mkdir()
    for name in SAMPLES:
        (samples / Path(name).name).symlink_to(shared / name)
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENMILL_", "AWS_", "PREFECT_"))}
    # `prefect` and `tokenmill` come from env.sh's PATH, as in an operator's shell
    env.update(
        PATH=":".join(p for p in env.get("PATH", "").split(":") if p != venv_bin), TOKENMILL_HOME=str(root / "home"), TOKENMILL_SHARED=str(shared),
        TOKENMILL_REFRESH_CRON="* * * * *",  # due within the minute: the real scheduler has to start it
        TOKENMILL_REFRESH_DATASET="nightly",  # apart from the README's `web`, so the two refreshes never share a lease
        PREFECT_SERVER_SERVICES_DB_VACUUM_LOOP_SECONDS="30",  # every service runs at least one cycle during the module
    )  # fmt: skip
    output = root / "up.out"
    with open(output, "wb") as out:
        up = subprocess.Popen([sys.executable, "-m", "flows.cli", "up", "--s3-port", str(free_port()), "--prefect-port", str(free_port()), "--samples", str(samples)],
                              env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    running = Stack(url="", home=root / "home", env=env, up=up, output=output, started=time.monotonic())
    try:
        url = wait_for(lambda: _api_url(running), 240, "`tokenmill up` to print the UI address")
        running.url = url

        def served():
            from prefect.exceptions import ObjectNotFound

            try:
                with running.client() as client:
                    return client.read_deployment_by_name("corpus-refresh/scheduled")
            except (ObjectNotFound, OSError):
                return None

        wait_for(served, 240, "the served deployments", interval=2)
        running.served = time.monotonic()
        yield running
    finally:
        # children run in sessions of their own (S3 server, Prefect server): list them first
        children = _descendants(up.pid)
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
        for child in psutil.wait_procs(children, timeout=30)[1]:
            child.kill()


def _api_url(stack: Stack) -> str | None:
    if stack.up.poll() is not None:
        raise AssertionError(f"`tokenmill up` exited with {stack.up.returncode}:\n{stack.output.read_text()[-3000:]}")
    found = re.search(r"Prefect UI:\s+(http://127\.0\.0\.1:\d+)", stack.output.read_text())
    return found and f"{found.group(1)}/api"


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.fixture(scope="module")
def killed_run(stack, shared):
    """A `tokenmill refresh` SIGKILLed while it runs (no process left to report its end).
    Requested by the module's first test, so the zombie window passes while the others run."""
    upload = stack.shell(f"tokenmill upload {shared / BIG_INPUT} --to zombie-input")
    assert upload.returncode == 0, upload.stderr
    # `python -m flows.cli` is `tokenmill` from this checkout (the console script imports the installed one)
    cli = subprocess.Popen(["bash", "-c", f"source {stack.home}/env.sh && exec python -m flows.cli refresh 's3://tokenmill/zombie-input/*' --dataset zombie"],
                           env=stack.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    from prefect.client.schemas.filters import FlowFilter, FlowRunFilter
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    def running_refresh():
        with stack.client() as client:
            runs = client.read_flow_runs(flow_filter=FlowFilter(name={"any_": ["corpus-refresh"]}),
                                         flow_run_filter=FlowRunFilter(deployment_id={"is_null_": True}))  # fmt: skip
        return next((r for r in runs if r.state and r.state.type.value == "RUNNING"), None)

    def heartbeat_seen(run_id) -> bool:
        with stack.client() as client:
            page = client.read_events(EventFilter(event=EventNameFilter(name=["prefect.flow-run.heartbeat"]), resource=EventResourceFilter(id=[f"prefect.flow-run.{run_id}"])), limit=10)
        return bool(page.events)

    try:
        run = wait_for(running_refresh, 180, "the CLI's corpus-refresh run to be RUNNING")
        wait_for(lambda: heartbeat_seen(run.id), 120, "the run's first heartbeat")
    finally:
        os.killpg(cli.pid, signal.SIGKILL)
        cli.wait(timeout=30)
    with stack.client() as client:
        state = client.read_flow_run(run.id).state
    assert state.type.value == "RUNNING", f"the refresh ended ({state.type.value}: {state.message}) before it could be killed"
    return run.id, time.monotonic()


def test_env_file_is_private_quoted_and_reaches_the_stack(stack, killed_run):
    env_file = stack.home / "env.sh"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    text = env_file.read_text()
    assert f"export PREFECT_API_URL={stack.url}\n" in text
    assert "export DO_NOT_TRACK=1\n" in text and "export PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30\n" in text
    values = stack.shell("echo \"$AWS_ENDPOINT_URL|$TOKENMILL_S3_ENDPOINT|$AWS_SECRET_ACCESS_KEY|$TOKENMILL_HOME|$(command -v prefect)\"").stdout.strip().split("|")
    assert values[0] == values[1] and values[0].startswith("http://127.0.0.1:") and values[2] and values[3] == str(stack.home)
    assert values[4] == str(Path(sys.executable).parent / "prefect"), "the Prefect client of the server's environment comes first on PATH"


def test_readme_sequence(stack):
    """The README's commands as written: deployments listed, the ad-hoc refresh run over the
    samples `up --samples` loaded, the new version listed by `tokenmill datasets`."""
    listed = stack.shell("prefect deployment ls")
    assert listed.returncode == 0, listed.stderr[-2000:]
    for name in ("corpus-refresh/ad-hoc", "corpus-refresh/scheduled", "ingest/ad-hoc", "train/on-dataset-ready"):
        assert name in listed.stdout
    started = stack.shell("""prefect deployment run 'corpus-refresh/ad-hoc' \\
  --param params='{"sources": ["s3://tokenmill/raw/samples/*"], "dataset": "web"}'""")
    assert started.returncode == 0, started.stderr[-2000:]
    run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", started.stdout).group(1)
    assert wait_final(stack, run_id, 420) == "COMPLETED"
    datasets = stack.shell("tokenmill datasets web")
    assert datasets.returncode == 0, datasets.stderr
    assert "s3://tokenmill/datasets/web/versions/" in datasets.stdout and "latest" in datasets.stdout


def test_scheduled_deployment_runs_through_the_scheduler(stack):
    """Prefect's scheduler service creates the cron deployment's runs and `up`'s serving
    process runs one to completion (SQLAlchemy 2.1 broke the scheduler without a word)."""
    with stack.client() as client:
        deployment = client.read_deployment_by_name("corpus-refresh/scheduled")
    assert deployment.schedules and deployment.schedules[0].schedule.cron == "* * * * *"
    from prefect.client.schemas.filters import DeploymentFilter

    def completed_scheduled_run():
        with stack.client() as client:
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id={"any_": [deployment.id]}))
        assert not [r for r in runs if r.state.type.value in ("FAILED", "CRASHED")], [(r.name, r.state.message) for r in runs]
        return next((r for r in runs if r.state.type.value == "COMPLETED"), None)

    run = wait_for(completed_scheduled_run, 480, "a scheduled run to complete", interval=3)
    assert run.auto_scheduled
    print(f"scheduled run completed {time.monotonic() - stack.served:.0f}s after the deployments were served")


def test_killed_run_is_marked_crashed(stack, killed_run):
    """No heartbeat for three intervals (30 s each) and the server's automation marks the run CRASHED."""
    run_id, killed_at = killed_run
    state = wait_for(lambda: (s := flow_run_state(stack, run_id)) != "RUNNING" and s, 3 * 30 + 90, "the killed run to leave RUNNING", interval=2)
    assert state == "CRASHED"
    print(f"killed run marked CRASHED {time.monotonic() - killed_at:.0f}s after SIGKILL")


def test_prefect_services_log_no_errors(stack):
    """Every server service (scheduler, triggers, late runs, repossessor, foreman, vacuum...)
    has run cycles by now (longest loop: 60 s); none logged a traceback."""
    wait_for(lambda: time.monotonic() - stack.served > 65, 70, "a full scheduler loop")
    log = (stack.home / "logs" / "prefect-server.log").read_text()
    records = re.split(r"\n(?=\d\d:\d\d:\d\d\.\d+ \|)", log)
    errors = [record for record in records if "Traceback" in record or re.search(r"\|\s*(ERROR|CRITICAL)\s*\|", record)]
    assert not [record for record in errors if not _retried_sqlite_lock(record)], "\n\n".join(errors[:5])


def _retried_sqlite_lock(record: str) -> bool:
    """SQLite answers a write that races another with "database is locked" even inside its busy
    timeout (a read lock cannot be upgraded); Prefect's in-memory message consumer logs it and
    puts the message back (messaging/memory.py: `subscription.retry`), so nothing is lost."""
    return "Failed in consume_loop" in record and "sqlite3.OperationalError: database is locked" in record


def test_sigterm_stops_every_child(stack):
    children = _descendants(stack.up.pid)
    assert len(children) >= 3  # S3 server, Prefect server, serving process
    os.kill(stack.up.pid, signal.SIGTERM)
    assert stack.up.wait(timeout=90) == 0
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"left running after SIGTERM: {[p.cmdline()[:4] for p in alive]}"
