"""`tokenmill up` (the local stack: S3 server, Prefect server + UI, a process serving the
deployments), `tokenmill demo` (the main job end to end on embedded defaults) and
`tokenmill upload` (local files to object storage)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from flows.cli import CommandError
from pipeline.settings import ENV_DATA_ROOT, ENV_HOME, ENV_S3_ENDPOINT, StorageSettings, data_root, shared_dir, tokenmill_home

ENV_PREFECT_API = "PREFECT_API_URL"
# The shared sample set `--samples` and the demo load (WARC pages and the JSONL web sample).
SAMPLE_FILES = ("corpora/warc/sample-0000.warc.gz", "corpora/warc/sample-0001.warc.gz", "corpora/warc/wcxb-dev-500.warc.gz",
                "corpora/warc/whirlwind.warc.gz", "corpora/web/web_sample.jsonl.gz")  # fmt: skip
SAMPLES_PREFIX = "raw/samples"


def register(sub) -> None:
    up = sub.add_parser("up", help="start the local stack: S3 server, Prefect server (SQLite) + UI, deployments")
    up.add_argument("--s3-port", type=int, default=8333)
    up.add_argument("--prefect-port", type=int, default=4200)
    up.add_argument("--samples", nargs="?", const="shared", metavar="DIR",
                    help=f"upload sample input to <data root>/{SAMPLES_PREFIX}/: the shared sample set, or the files of DIR")  # fmt: skip
    up.set_defaults(func=cmd_up)

    demo = sub.add_parser("demo", help="ingest → corpus refresh → train on the shared sample against the embedded S3 server")
    demo.add_argument("--shared", default=str(shared_dir()), help="folder with the sample data (default $TOKENMILL_SHARED)")
    demo.add_argument("--steps", type=int, default=30, help="training steps of the tiny model")
    demo.add_argument("--skip-train", action="store_true")
    demo.set_defaults(func=cmd_demo)

    upload = sub.add_parser("upload", help="copy local files or folders to object storage (skips objects already there)")
    upload.add_argument("paths", nargs="+", type=Path, help="files or folders (folders keep their inner paths)")
    upload.add_argument("--to", default="raw", help="destination: an s3:// URI, or a path under the data root (default: raw)")
    upload.set_defaults(func=cmd_upload)


# -- the stack ---------------------------------------------------------------------------


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: stop the children, then exit."""


@contextmanager
def terminate_like_interrupt() -> Iterator[None]:
    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class Stack:
    home: Path
    logs: Path
    api: str | None = None
    s3_server: object | None = None
    children: list[subprocess.Popen] = field(default_factory=list)

    def spawn(self, cmd: list[str], log_name: str) -> subprocess.Popen:
        with open(self.logs / log_name, "ab") as out:
            child = subprocess.Popen(cmd, env=dict(os.environ), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.children.append(child)
        return child

    def stop(self) -> None:
        # Flow runs of the serving process launch jobs in sessions of their own (training
        # ranks under torchrun): a group signal misses them, and once their flow run is gone
        # they are no longer our descendants. Remembered now, stopped last if still running.
        below = _descendants()
        for child in reversed(self.children):
            _stop(child)
        if self.s3_server is not None:
            self.s3_server.stop()
        _stop_leftovers(below)

    def dead_child(self) -> subprocess.Popen | None:
        return next((c for c in self.children if c.poll() is not None), None)


@contextmanager
def local_stack(home: Path, *, s3_port: int | None, prefect_port: int | None, own_prefect_server: bool) -> Iterator[Stack]:
    """Storage (the configured endpoint or the embedded server under `home/s3`) and a Prefect
    server on SQLite under `home/prefect` (kept: `tokenmill up` with the same home shows the
    runs and outputs of earlier sessions), with tokenmill's automations. Settings go to
    os.environ (before Prefect is imported here) so that this process, the flows' worker
    processes and training ranks all reach the same store and server.
    `own_prefect_server=False` uses PREFECT_API_URL when it is set."""
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    os.environ.update({"PREFECT_HOME": str(home / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"})
    stack = Stack(home=home, logs=logs)
    with terminate_like_interrupt():
        try:
            stack.s3_server, _ = ensure_storage(home, s3_port=s3_port)
            if own_prefect_server or not os.environ.get(ENV_PREFECT_API):
                from pipeline.s3server import free_port

                port = prefect_port or free_port()
                server = stack.spawn([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], "prefect-server.log")
                _wait_http(f"http://127.0.0.1:{port}/api/health", 180, server)
                os.environ[ENV_PREFECT_API] = f"http://127.0.0.1:{port}/api"
            stack.api = os.environ[ENV_PREFECT_API]
            from prefect.settings import PREFECT_API_URL, temporary_settings

            from flows.automations import ensure_automations

            # Also for a caller that imported Prefect before the server existed.
            with temporary_settings(updates={PREFECT_API_URL: stack.api}):
                ensure_automations()
                yield stack
        finally:
            stack.stop()


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


def write_env_file(path: Path, api: str, home: Path) -> dict[str, str]:
    """`env.sh` for other shells: storage settings (also as AWS_ENDPOINT_URL, so `aws s3` and
    other S3 tools reach the same server), the Prefect API, no telemetry, the heartbeat interval
    the zombie automation expects, and this environment's scripts first on PATH (so `prefect`
    and `tokenmill` are the versions the server runs: another Prefect client can be refused).
    Private (0600) from its first byte: it holds the S3 keys; values are shell-quoted."""
    from flows.automations import HEARTBEAT_ENV, heartbeat_seconds
    from pipeline.private_files import write_private

    settings = StorageSettings.from_env()
    exports = {**settings.as_env(), ENV_DATA_ROOT: data_root(), ENV_HOME: str(home), ENV_PREFECT_API: api,
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "AWS_REGION": settings.region, HEARTBEAT_ENV: str(heartbeat_seconds())}  # fmt: skip
    if settings.endpoint:
        exports["AWS_ENDPOINT_URL"] = settings.endpoint
    scripts = str(Path(sys.executable).parent)
    lines = [f"export {k}={shlex.quote(v)}\n" for k, v in exports.items()] + [f'export PATH={shlex.quote(scripts)}:"$PATH"\n']
    write_private(path, "".join(lines))
    return exports


def cmd_up(args: argparse.Namespace) -> int:
    home = tokenmill_home()
    try:
        with local_stack(home, s3_port=args.s3_port, prefect_port=args.prefect_port, own_prefect_server=True) as stack:
            from pipeline.storage import ObjectStore, join

            if args.samples:
                files = sample_files(shared_dir()) if args.samples == "shared" else [Path(args.samples)]
                loaded = upload(ObjectStore(), files, join(data_root(), SAMPLES_PREFIX))
                print(f"Samples:       {len(loaded['objects'])} objects under {join(data_root(), SAMPLES_PREFIX)}/")
            stack.spawn([sys.executable, "-m", "flows.serve"], "serve.log")
            env_file = home / "env.sh"
            exports = write_env_file(env_file, stack.api, home)
            print(f"Prefect UI:    {stack.api.removesuffix('/api')}")
            print(f"S3 endpoint:   {exports.get('AWS_ENDPOINT_URL', 'AWS S3')} (bucket {data_root()})")
            print(f"Environment:   source {env_file}")
            print(f"Logs:          {stack.logs}")
            print("Deployments:   prefect deployment ls   (served from this process; Ctrl-C or SIGTERM stops everything)", flush=True)
            while (dead := stack.dead_child()) is None:
                time.sleep(1)
            raise CommandError(f"{' '.join(dead.args[1:4])} exited with {dead.returncode}; see {stack.logs}")
    except KeyboardInterrupt:
        return 0


def cmd_demo(args: argparse.Namespace) -> int:
    home = tokenmill_home()
    with local_stack(home, s3_port=None, prefect_port=None, own_prefect_server=False) as stack:
        from flows.corpus_refresh import CorpusRefreshParams, corpus_refresh
        from flows.ingest import IngestParams, ingest
        from pipeline.storage import ObjectStore, join

        raw = upload(ObjectStore(), sample_files(Path(args.shared)), join(data_root(), SAMPLES_PREFIX))["objects"]
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
        where = "the embedded S3 server's data under " + str(home / "s3") if stack.s3_server is not None else os.environ[ENV_S3_ENDPOINT]
        print(f"\nThe outputs stay in {where}, the runs in the Prefect database under {home / 'prefect'}.")
        if stack.s3_server is not None:
            print(f"To browse them again: `tokenmill up` (same TOKENMILL_HOME={home}) serves both, then `source {home / 'env.sh'}`"
                  f" and e.g. `aws s3 ls {join(data_root(), 'datasets')}/` or `tokenmill datasets web`; the UI shows these runs.")  # fmt: skip
    return 0


def cmd_upload(args: argparse.Namespace) -> int:
    from pipeline.storage import ObjectStore, is_s3, join

    dest = args.to if is_s3(args.to) or args.to.startswith("/") else join(data_root(), *(_segment(p, "--to") for p in args.to.strip("/").split("/")))
    done = upload(ObjectStore(), args.paths, dest)
    print(json.dumps({"uploaded_to": dest, "uploaded": done["uploaded"], "unchanged": len(done["objects"]) - done["uploaded"]}, indent=1))
    return 0


# -- uploads ------------------------------------------------------------------------------


def sample_files(shared: Path) -> list[Path]:
    files = [shared / name for name in SAMPLE_FILES]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise CommandError(f"sample data not found: {missing[0]} (set TOKENMILL_SHARED or pass --shared)")
    return files


def upload(store, paths: list[Path], prefix: str) -> dict:
    """Upload files (a folder: every file under it, keyed by its path inside the folder) to
    `prefix`; an object already there with the same size is kept. Returns the object URIs
    (`objects`) and how many were uploaded."""
    from flows.cli.progress import bar
    from pipeline.storage import join

    pairs: list[tuple[Path, str]] = []
    for path in paths:
        if path.is_dir():
            pairs += [(f, join(prefix, *(_segment(p, "file name") for p in f.relative_to(path).parts))) for f in sorted(path.rglob("*")) if f.is_file()]
        elif path.is_file():
            pairs.append((path, join(prefix, _segment(path.name, "file name"))))
        else:
            raise CommandError(f"no such file or folder: {path}")
    if not pairs:
        raise CommandError(f"nothing to upload in {', '.join(map(str, paths))}")
    uploaded = 0
    with bar() as progress:
        task = progress.add_task(f"upload → {prefix}", total=sum(f.stat().st_size for f, _ in pairs))
        for local, uri in pairs:
            size = local.stat().st_size
            head = store.head(uri)
            if head is None or head.size != size:
                store.upload_file(local, uri)
                uploaded += 1
            progress.advance(task, size)
    return {"objects": [uri for _, uri in pairs], "uploaded": uploaded}


def _segment(value: str, field: str) -> str:
    from pipeline.names import segment

    return segment(value, field)


# -- processes ------------------------------------------------------------------------------


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)
    except ProcessLookupError:
        pass


def _descendants() -> list:
    import psutil

    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def _stop_leftovers(procs: list, grace_s: float = 30.0) -> None:
    """SIGTERM (a training rank checkpoints on it), then SIGKILL what is left after `grace_s`."""
    import psutil

    alive = [p for p in procs if p.is_running()]
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        for proc in alive:
            try:
                proc.send_signal(sig)
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(alive, timeout=wait_s)
        if not alive:
            return


def _wait_http(url: str, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CommandError(f"{' '.join(proc.args[1:5])} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise CommandError(f"{url} did not answer within {timeout:.0f}s")
