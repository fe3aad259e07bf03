"""`tokenmill up`: the local stack starts, serves the deployments, runs one, and stops clean."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest

from pipeline.s3server import free_port

pytestmark = pytest.mark.slow


def api(url: str, path: str, body: dict | None = None):
    request = urllib.request.Request(url + path, data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"}, method="POST" if body is not None else "GET")  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def test_up_serves_deployments_and_runs_one(tmp_path, shared):
    s3_port, prefect_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENMILL_S3", "AWS_", "PREFECT_"))}
    env.update(TOKENMILL_HOME=str(tmp_path / "home"), TOKENMILL_SHARED=str(shared), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    up = subprocess.Popen([sys.executable, "-m", "flows.cli", "up", "--s3-port", str(s3_port), "--prefect-port", str(prefect_port)],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{prefect_port}/api"
    try:
        def served():
            try:
                names = {f"{d['name']}" for d in api(url, "/deployments/filter", {})}
            except OSError:
                return None
            return names if {"ad-hoc", "scheduled", "on-dataset-ready"} <= names else None

        wait_for(served, 180, "the served deployments")
        deployments = {(d["name"], d["flow_id"]): d for d in api(url, "/deployments/filter", {})}
        scheduled = next(d for (name, _), d in deployments.items() if name == "scheduled")
        assert scheduled["schedules"] and scheduled["schedules"][0]["schedule"]["cron"] == "0 3 * * *"
        env_file = (tmp_path / "home" / "env.sh").read_text()
        assert f"PREFECT_API_URL={url}" in env_file and f"TOKENMILL_S3_ENDPOINT=http://127.0.0.1:{s3_port}" in env_file
        assert oct((tmp_path / "home" / "env.sh").stat().st_mode & 0o777) == "0o600"

        # an ad-hoc ingest run, as the UI's "Run" button or `prefect deployment run` would start it
        flows = {f["id"]: f["name"] for f in api(url, "/flows/filter", {})}
        ingest = next(d for d in deployments.values() if flows[d["flow_id"]] == "ingest")
        sample = str(shared / "corpora" / "warc" / "whirlwind.warc.gz")
        run = api(url, f"/deployments/{ingest['id']}/create_flow_run",
                  {"parameters": {"params": {"sources": [sample], "dataset": "smoke", "runner": {"kind": "threads"}}}})  # fmt: skip
        final = wait_for(lambda: (r := api(url, f"/flow_runs/{run['id']}"))["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED") and r, 240, "the flow run")
        assert final["state"]["type"] == "COMPLETED", final["state"]
    finally:
        os.killpg(up.pid, signal.SIGINT)
        out, _ = up.communicate(timeout=60)
    assert "Prefect UI:    http://127.0.0.1:" in out
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] and str(tmp_path) in " ".join(p.info["cmdline"])]
    assert not leftovers, f"processes left running: {[p.info['cmdline'][:3] for p in leftovers]}"
