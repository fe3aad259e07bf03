"""What an operator sees from the command line and in the UI for a refresh: bad parameters as
one line naming the field, a progress bar and a progress artifact on the run they launched,
task runs named after their input, per-rule tables, the dataset card, `tokenmill datasets`
and `tokenmill upload`. Real Prefect (test harness), real S3 server, real pages."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import os
import subprocess
import sys
import uuid

import pytest

from flows.cli import main
from pipeline.storage import ObjectStore, join
from tests.conftest import read_web_sample

pytestmark = pytest.mark.slow


def put_jsonl(store: ObjectStore, uri: str, docs: list[dict]) -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as gz:
        for d in docs:
            gz.write((json.dumps(d) + "\n").encode())
    store.put_bytes(uri, buf.getvalue())


def run_cli(*argv: str) -> tuple[int, str]:
    """`tokenmill ARGV` in this process (the harness's Prefect server), stdout captured; the
    environment default it sets (heartbeat interval) does not leak into other tests."""
    saved = dict(os.environ)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = main(list(argv))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def refreshed(prefect_harness, s3_settings, shared):
    """One `tokenmill refresh` over two JSONL sources of real pages (the second repeats five
    pages of the first and one twice, so dedup has clusters of 2 and 3)."""
    store = ObjectStore(s3_settings)
    bucket = f"s3://cli-{uuid.uuid4().hex[:10]}"
    store.ensure_bucket(bucket.removeprefix("s3://"))
    docs = read_web_sample(shared, 80)
    first, second = docs[:40], docs[40:] + [dict(d, id=f"copy-{d['id']}") for d in docs[:5]] + [dict(docs[0], id="copy2")]
    put_jsonl(store, join(bucket, "raw", "pages-a.jsonl.gz"), first)
    put_jsonl(store, join(bucket, "raw", "pages-b.jsonl.gz"), second)
    dataset = join(bucket, "datasets", "web")
    code, output = run_cli("refresh", join(bucket, "raw", "*"), "--dataset", dataset, "--runner", "threads", "--workers", "2")
    assert code == 0, output
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name={"any_": ["corpus-refresh"]}))
    root = next(r for r in runs if r.parameters["params"]["dataset"] == dataset)
    return {"store": store, "bucket": bucket, "dataset": dataset, "output": output, "root": root}


def artifacts_of(flow_run_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id={"any_": [flow_run_id]}))


def test_cli_shows_a_bar_and_a_summary(refreshed):
    out = refreshed["output"]
    assert f"refresh → {refreshed['dataset']}" in out
    summary = json.loads(out[out.index("{") :])
    assert summary["uri"].startswith(refreshed["dataset"] + "/versions/") and summary["documents"] > 0
    assert "dropped by rule" in out


def test_progress_artifact_is_on_the_run_the_user_launched(refreshed):
    progress = [a for a in artifacts_of(refreshed["root"].id) if a.type == "progress"]
    assert progress and progress[-1].data == 100.0


def test_task_runs_are_named_after_their_input(refreshed):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter

    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id={"any_": [refreshed["root"].id]}))
        names = {t.name for c in children for t in client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [c.id]}))}
    assert {"filter-pages-a.jsonl.gz", "filter-pages-b.jsonl.gz"} <= names


def test_per_source_table_has_one_column_per_rule(refreshed):
    table = next(a for a in artifacts_of(refreshed["root"].id) if a.key == "refresh-units")
    rows = json.loads(table.data)
    assert len(rows) == 2 and "dropped" not in rows[0]
    rules = [k for k in rows[0] if ":" in k]
    assert rules and all(isinstance(row[rule], int) for row in rows for rule in rules)
    assert all(row["read"] - row["kept"] == sum(row[rule] for rule in rules) for row in rows)


def test_dataset_card_beside_the_manifest_and_in_the_ui(refreshed):
    from pipeline.dataset import latest_version

    store, version = refreshed["store"], latest_version(refreshed["dataset"], refreshed["store"])
    card = store.get_bytes(join(version.uri, "card.md")).decode()
    report = version.sealed_manifest().extra["refresh"]
    stats = report["card"]
    assert sum(stats["length_before"]) == report["documents_read"] and sum(stats["length_after"]) == report["after_filters"]
    assert sum(stats["scores"]["toxicity"]) > 0
    assert [s["source"] for s in stats["sources"]] and sum(s["kept"] for s in stats["sources"]) == report["after_filters"]
    for name in ("sources", "languages", "lengths", "drops", "toxicity", "clusters"):
        assert f"](card/{name}.png)" in card, name
        assert store.get_bytes(join(version.uri, "card", f"{name}.png")).startswith(b"\x89PNG")
    artifact = next(a for a in artifacts_of(refreshed["root"].id) if a.key == "dataset-card")
    assert artifact.data.count("](data:image/png;base64,") == 6 and "](card/" not in artifact.data


def test_datasets_lists_versions_with_the_latest_marked(refreshed):
    from pipeline.dataset import latest_version

    code, out = run_cli("datasets", refreshed["dataset"])
    assert code == 0
    latest = latest_version(refreshed["dataset"], refreshed["store"])
    line = next(line for line in out.splitlines() if line.startswith(latest.version))
    assert "latest" in line and latest.uri in line and line.count("-") >= 2  # sealed date


def test_typos_are_one_line_naming_the_field(tmp_path):
    bad = tmp_path / "filters.yaml"
    bad.write_text("gopher_quality:\n  min_wordz: 20\n")
    env = {**os.environ, "TOKENMILL_SHARED": os.environ.get("TOKENMILL_SHARED", "")}
    for extra, field in ((["--filters", str(bad)], "gopher_quality.min_wordz"), (["--dedup", '{"treshold": 0.5}'], "treshold")):
        cli = subprocess.run([sys.executable, "-m", "flows.cli", "refresh", "s3://nowhere/raw/*", "--dataset", "x", *extra], env=env, capture_output=True, text=True, timeout=120)
        assert cli.returncode == 2 and field in cli.stderr and len(cli.stderr.strip().splitlines()) == 1, cli.stderr


def test_refresh_parameters_forbid_unknown_keys():
    from pydantic import ValidationError

    from flows.corpus_refresh import CorpusRefreshParams

    with pytest.raises(ValidationError, match="fliters"):
        CorpusRefreshParams(sources=["s3://b/raw/*"], dataset="web", fliters={"langid": {"enabled": False}})


def test_upload_keeps_inner_paths_and_skips_what_is_there(s3_settings, tmp_path):
    store = ObjectStore(s3_settings)
    bucket = f"up-{uuid.uuid4().hex[:10]}"
    store.ensure_bucket(bucket)
    (tmp_path / "crawl" / "2024").mkdir(parents=True)
    (tmp_path / "crawl" / "a.jsonl").write_text('{"text": "a"}\n')
    (tmp_path / "crawl" / "2024" / "b.jsonl").write_text('{"text": "b"}\n')
    dest = f"s3://{bucket}/raw/crawl"
    code, out = run_cli("upload", str(tmp_path / "crawl"), "--to", dest)
    assert code == 0 and json.loads(out[out.index("{") :])["uploaded"] == 2
    assert {o.uri for o in store.list(dest + "/")} == {f"{dest}/a.jsonl", f"{dest}/2024/b.jsonl"}
    code, out = run_cli("upload", str(tmp_path / "crawl"), "--to", dest)
    assert code == 0 and json.loads(out[out.index("{") :]) == {"uploaded_to": dest, "uploaded": 0, "unchanged": 2}
    bad = tmp_path / "bad name;rm"
    bad.write_text("x")
    assert run_cli("upload", str(bad), "--to", dest)[0] == 2  # a file name that is not a safe key segment


def test_log_lines_print_above_the_bar():
    from rich.console import Console

    from flows.cli.progress import _all_handlers, bar, logs_above

    prefect_logger = logging.getLogger("prefect.flow_runs")
    from prefect import flow  # noqa: F401  (loads prefect.main: Prefect's console handler on the root logger)

    assert any(type(h).__name__ == "PrefectConsoleHandler" for h in _all_handlers())
    screen = io.StringIO()
    progress = bar(console=Console(file=screen, force_terminal=True, width=100))
    with progress, logs_above(progress):
        progress.add_task("work", total=2)
        prefect_logger.warning("a line from a flow")
    assert "a line from a flow" in screen.getvalue()
