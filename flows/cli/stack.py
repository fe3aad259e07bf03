"""`tokenmill up` (the local stack: S3 server, Prefect server + UI, a process serving the
deployments) and `tokenmill demo` (the main job end to end on embedded defaults)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from flows.cli import CommandError
from pipeline.settings import ENV_S3_ENDPOINT, StorageSettings, data_root, shared_dir, tokenmill_home


def register(sub) -> None:
    up = sub.add_parser("up", help="start the local stack: S3 server, Prefect server (SQLite) + UI, deployments")
    up.add_argument("--s3-port", type=int, default=8333)
    up.add_argument("--prefect-port", type=int, default=4200)
    up.set_defaults(func=cmd_up)

    demo = sub.add_parser("demo", help="ingest → corpus refresh → train on the shared sample against the embedded S3 server")
    demo.add_argument("--shared", default=str(shared_dir()), help="folder with the sample data (default $TOKENMILL_SHARED)")
    demo.add_argument("--steps", type=int, default=30, help="training steps of the tiny model")
    demo.add_argument("--skip-train", action="store_true")
    demo.set_defaults(func=cmd_demo)


def ensure_storage(home: Path, s3_port: int | None = None):
    """Use the configured endpoint, or start the embedded server (data kept under `home/s3`).
    Exports the settings so flows, workers and training ranks reach the same store."""
    from pipeline.s3server import start_s3_server
    from pipeline.storage import ObjectStore, split_s3

    server = None
    if not os.environ.get(ENV_S3_ENDPOINT):
        server = start_s3_server(home / "s3", s3_port=s3_port)
        os.environ.update(server.env())
    store = ObjectStore(StorageSettings.from_env())
    store.ensure_bucket(split_s3(data_root())[0])
    return server, store


def local_prefect_env(home: Path) -> None:
    """Without PREFECT_API_URL, Prefect runs a local server for the process (SQLite under home)."""
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def upload_samples(store, shared: Path, prefix: str) -> list[str]:
    from flows.cli.progress import bar
    from pipeline.storage import join

    files = sorted((shared / "corpora" / "warc").glob("*.gz")) + [shared / "corpora" / "web" / "web_sample.jsonl.gz"]
    missing = [f for f in files if not f.exists()]
    if missing:
        raise CommandError(f"sample data not found: {missing[0]} (pass --shared)")
    uris = []
    with bar() as progress:
        task = progress.add_task("upload samples", total=sum(f.stat().st_size for f in files))
        for f in files:
            uri = join(prefix, f.name)
            head = store.head(uri)
            if head is None or head.size != f.stat().st_size:
                store.upload_file(f, uri)
            uris.append(uri)
            progress.advance(task, f.stat().st_size)
    return uris


def cmd_demo(args: argparse.Namespace) -> int:
    home = tokenmill_home()
    local_prefect_env(home)
    server, store = ensure_storage(home)
    try:
        from flows.corpus_refresh import CorpusRefreshParams, corpus_refresh
        from flows.ingest import IngestParams, ingest
        from pipeline.storage import join

        raw = upload_samples(store, Path(args.shared), join(data_root(), "raw", "samples"))
        crawl = ingest(IngestParams(sources=raw, dataset="crawl", target_shard_mb=16))
        print(f"\ningested {crawl['rows']:,} documents into {crawl['uri']} ({len(crawl['shards'])} shards), quarantined {json.dumps(crawl['quarantined'])}:")
        for uri in crawl["shards"]:
            print(f"  {uri}")
        web = corpus_refresh(CorpusRefreshParams(sources=crawl["shards"], dataset="web", target_shard_mb=16))
        report = web["report"]
        print(f"\ncorpus refresh → {web['uri']}")
        print(f"  documents: {report['documents_read']:,} read, {report['after_filters']:,} after filters, {report['documents']:,} after dedup")
        print(f"  dropped: {json.dumps(report['dropped'])}")
        print(f"  quarantined: {json.dumps(report['quarantined'])}")
        for uri in web["shards"]:
            print(f"  shard {uri}")
        if not args.skip_train:
            from flows.train import TrainParameters, train

            result = train(TrainParameters(run_name=f"demo-{web['version']}", dataset_uri=web["dataset"], dataset_version=web["version"], model_preset="tiny", steps=args.steps))
            print("\ntraining (tiny preset, 2 CPU ranks):")
            for key in ("report", "checkpoint", "hf_model", "loss_curve"):
                if key in result:
                    print(f"  {key}: {result[key]}")
    finally:
        if server is not None:
            server.stop()
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    home = tokenmill_home()
    server, _ = ensure_storage(home, s3_port=args.s3_port)
    api = f"http://127.0.0.1:{args.prefect_port}/api"
    env = dict(os.environ, PREFECT_HOME=str(home / "prefect"), PREFECT_API_URL=api, PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    children = []
    try:
        children.append(_spawn([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(args.prefect_port)], env, logs / "prefect-server.log"))
        _wait_http(api + "/health", 180, children[0])
        children.append(_spawn([sys.executable, "-m", "flows.serve"], env, logs / "serve.log"))
        env_file = home / "env.sh"
        settings = StorageSettings.from_env()
        exports = {**settings.as_env(), "PREFECT_API_URL": api}
        env_file.write_text("".join(f"export {k}={v}\n" for k, v in exports.items()))
        env_file.chmod(0o600)
        print(f"Prefect UI:    http://127.0.0.1:{args.prefect_port}")
        print(f"S3 endpoint:   {settings.endpoint or 'AWS S3'} (bucket {data_root()})")
        print(f"Environment:   source {env_file}")
        print(f"Logs:          {logs}")
        print("Deployments:   prefect deployment ls   (serving from this process; Ctrl-C stops everything)")
        while all(c.poll() is None for c in children):
            time.sleep(1)
        dead = next(c for c in children if c.poll() is not None)
        raise CommandError(f"{dead.args[2] if len(dead.args) > 2 else dead.args} exited with {dead.returncode}; see {logs}")
    except KeyboardInterrupt:
        return 0
    finally:
        for child in reversed(children):
            _stop(child)
        if server is not None:
            server.stop()


def _spawn(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait_http(url: str, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CommandError(f"{' '.join(proc.args[:4])} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise CommandError(f"{url} did not answer within {timeout:.0f}s")
