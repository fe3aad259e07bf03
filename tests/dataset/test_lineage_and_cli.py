"""`tokenmill lineage`, `verify`, `gc`, `remove`/`removals` on the real S3 server: the CLI's
own entry point (`flows.cli.main`, argument parsing to exit code), in this process to spare
an interpreter start per command; one command also runs as a separate process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from flows.automations import HEARTBEAT_ENV, HEARTBEAT_SECONDS
from flows.cli import main
from pipeline.dataset import DatasetVersion, latest_version, write_sealed
from pipeline.lineage import find, record_training_run
from pipeline.schema import documents_from_pylist
from pipeline.storage import join


@pytest.fixture()
def cli(bucket, monkeypatch, capsys):
    """Run `tokenmill ARGS...` with the data root in `bucket`: (exit code, stdout, stderr)."""
    monkeypatch.setenv("TOKENMILL_DATA_ROOT", bucket)
    monkeypatch.setenv(HEARTBEAT_ENV, os.environ.get(HEARTBEAT_ENV) or str(HEARTBEAT_SECONDS))  # main() sets it; undone after the test

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def pages(n: int, host: str = "Example.org") -> list[dict]:
    return [{"id": f"doc-{i}", "text": f"page {i} text", "url": f"https://{host}/p/{i}", "source": "s3://raw/x.jsonl"} for i in range(n)]


def test_lineage_lists_versions_and_training_runs(store, bucket, cli, tmp_path):
    dataset = join(bucket, "datasets", "web")
    first = write_sealed(DatasetVersion(dataset, "00000001", store), documents_from_pylist(pages(20)), 10)
    removed, staying = pages(20)[0], pages(20)[-1]
    record_training_run(dataset, first.version, "web-run-1", join(bucket, "runs", "web-run-1"), store)
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"name": "takedown-7", "urls": [removed["url"].lower() + "/"], "reason": "asked by someone@example.com"}))
    code, _, err = cli("remove", "--dataset", "web", "--request", str(request))
    assert code == 0, err
    second = latest_version(dataset, store)
    assert second.version != first.version and removed["id"] not in second.read_table(columns=["id"]).column("id").to_pylist()
    assert second.manifest().rows == 19

    gone = find(removed["url"].replace("https://", "HTTP://"), datasets=[dataset], store=store)
    assert [v["version"] for v in gone["versions"]] == [first.version]
    assert [r["run"] for r in gone["training_runs"]] == ["web-run-1"]
    code, out, err = cli("lineage", staying["id"])  # every dataset under the data root
    assert code == 0, err
    found = json.loads(out)
    assert {(v["dataset"], v["version"]) for v in found["versions"]} == {(dataset, first.version), (dataset, second.version)}
    assert [r["run"] for r in found["training_runs"]] == ["web-run-1"]

    _, listed, _ = cli("removals", "web")
    assert listed.split()[:3] == ["takedown-7", "ids=0", "urls=1"] and "example" not in listed.lower()
    code, _, _ = cli("remove", "--dataset", "web", "--withdraw", "takedown-7", "--reason", "filed in error")
    assert code == 0 and cli("removals", "web")[1] == ""


def test_verify_and_gc_commands(store, bucket, cli, s3_settings):
    dataset = join(bucket, "datasets", "small")
    version = DatasetVersion(dataset, "00c0ffee", store)
    write_sealed(version, documents_from_pylist(pages(30)), 10)
    env = {**os.environ, **s3_settings.as_env(), "TOKENMILL_DATA_ROOT": bucket}
    process = subprocess.run([sys.executable, "-m", "flows.cli", "verify", "small@00c0ffee", "--checksums"], capture_output=True, text=True, timeout=300, env=env)
    assert process.returncode == 0 and process.stdout.strip().endswith("ok"), process.stderr
    store.put_bytes(join(version.uri, "data", "zombie-00000-deadbeef.parquet"), b"a late writer's object")
    code, out, _ = cli("verify", "small")
    assert code == 1 and "zombie-00000-deadbeef.parquet: not in the manifest (orphan)" in out
    dry = json.loads(cli("gc", "small", "--dry-run")[1])
    assert dry["orphans"] == 1 and store.exists(join(version.uri, "data", "zombie-00000-deadbeef.parquet"))
    assert json.loads(cli("gc", "small")[1])["orphans"] == 1
    assert cli("verify", "small@00c0ffee")[0] == 0
    code, _, err = cli("verify", "small/../../raw")
    assert code == 2 and "dataset" in err and err.count("\n") == 1
    code, _, err = cli("verify", "small/tokens")
    assert code == 2 and "layout of dataset 'small'" in err
