"""The whole corpus refresh on a real Dask cluster at 1x, 10x and 100x the web sample
(benchmark, not a test).

    .venv/bin/python bench/scale.py [--scales 1,10,100] [--scratch /work/scratch/h16] [--skip-speedup] [--skip-kill]

Corpus at scale k: the 2,478 pages of the shared web sample k times (copy 0 as it is, copies
1..k-1 with 20 % of their words replaced by sample words: each copy is far from every other,
J ~ 0.2), plus planted variants of a known 10 % of the documents (chosen by a hash of the
id): one of four kinds, J >= 0.85 to their source: `norm` (case, punctuation, soft hyphens,
zero-width spaces and a BOM: the same words), `edit` (1 % of words replaced), `trunc` (the
last 8 % of lines dropped) and `insert` (1 % words inserted); and near misses of another 2 %
(`miss`, 8 % of words replaced, J ~ 0.5) that must not be removed. Every planted pair's
5-gram Jaccard is measured on the generated texts. Documents are shuffled into JSONL.gz
sources of 5,000 and generated under the scratch folder (never the repository); a corpus
already there is reused.

Cluster: the embedded S3 server (SeaweedFS), a Prefect server, and a Dask cluster started
the way docker/compose.yaml starts it: `dask scheduler` and N `dask worker --nworkers 1
--nthreads 1` processes (separate OS processes), each with a worker plugin (this file is
its `--preload`) that records every task's peak RSS (VmHWM, reset at each task start
through /proc/self/clear_refs), the RSS the worker had when the task started (what earlier
tasks left resident: Python keeps freed memory), the task's own peak above that, and CPU. The flow runs in its own process against the
scheduler address (runner kind "dask").

Experiments (each a fresh dataset, cluster and log; results kept under <scratch>/results, so
a rerun skips what is measured already):
  scale-<k>       the refresh at scale k on 2 workers: documents per CPU-second (CPU of the
                  worker processes by psutil, plus the flow process and the scheduler), peak
                  RSS per task by stage, F1 on the planted pairs, which copy was kept
  workers-4       the 10x refresh on 4 workers (speed-up 2 -> 4 workers, wall clock)
  kill            the 10x refresh on 2 workers with one worker (nanny and worker) killed by
                  SIGKILL once the dedup stages have started: the run must finish on the
                  survivor with the same documents and the same removal table

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("TOKENMILL_SHARED", ROOT.parent / "shared"))
TASK_LOG_ENV = "TOKENMILL_BENCH_TASK_LOG"

DOCS_PER_SOURCE = 5000
REPLICA_EDIT = 0.20
PLANT_RATE, MISS_RATE = 0.10, 0.02
KINDS = ("norm", "edit", "trunc", "insert")
TRUE_MIN_J, MISS_MAX_J = 0.85, 0.65
# Small partitions, so that there are many at 10x and 100x: what a task holds is a partition.
BENCH_DEDUP = {"partition_docs": 2_000, "bucket_docs": 20_000}


# -- the worker plugin (this file is each dask worker's --preload) ------------------------------


def _vm_mb(field: str) -> float:
    """VmHWM (peak resident set since the last reset) or VmRSS of this process, in MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _task_name(worker, key) -> str:
    """The Prefect task's name (e.g. "dedup-verify") from the run spec prefect-dask submits."""
    ts = worker.state.tasks.get(key)
    spec = getattr(ts, "run_spec", None)
    for holder in (getattr(spec, "kwargs", None), getattr(spec, "args", None)):
        items = holder.values() if isinstance(holder, dict) else holder or ()
        for item in items:
            value = getattr(item, "value", item)
            if hasattr(value, "name") and hasattr(value, "fn"):
                return str(value.name)
    return str(key).rsplit("-", 1)[0]


def dask_setup(worker) -> None:
    from distributed import WorkerPlugin

    log_dir = os.environ.get(TASK_LOG_ENV)
    if not log_dir:
        return

    class TaskRecorder(WorkerPlugin):
        def __init__(self):
            self.started: dict = {}

        def transition(self, key, start, finish, **kwargs):
            if finish == "executing":
                with open("/proc/self/clear_refs", "w") as fh:
                    fh.write("5")  # VmHWM := current RSS
                t = os.times()
                self.started[key] = (time.time(), t.user + t.system, _vm_mb("VmRSS"))
            elif start == "executing" and key in self.started:
                wall0, cpu0, rss0 = self.started.pop(key)
                t = os.times()
                peak = _vm_mb("VmHWM")
                record = {"task": _task_name(worker, key), "state": finish, "peak_rss_mb": round(peak, 1), "rss_at_start_mb": round(rss0, 1),
                          "own_peak_mb": round(peak - rss0, 1), "cpu_s": round(t.user + t.system - cpu0, 3), "wall_s": round(time.time() - wall0, 3),
                          "pid": os.getpid()}  # fmt: skip
                with open(Path(log_dir) / f"{os.getpid()}.jsonl", "a") as fh:
                    fh.write(json.dumps(record) + "\n")

    worker.plugins["tokenmill-task-recorder"] = TaskRecorder()


# -- corpus ------------------------------------------------------------------------------------


def stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class Corpus:
    """The web sample and everything generated from it, by document id (deterministic)."""

    def __init__(self) -> None:
        with gzip.open(SHARED / "corpora/web/web_sample.jsonl.gz", "rt", encoding="utf-8") as fh:
            self.base = [json.loads(line)["text"] for line in fh]
        vocab = sorted({w for t in self.base[:400] for w in t.split() if w.isalpha() and len(w) > 2})
        self.vocab = np.array(vocab, dtype=object)

    def replica(self, i: int, r: int) -> str:
        text = self.base[i]
        return text if r == 0 else self._replace(text, REPLICA_EDIT, f"r{i}.{r}")

    def _replace(self, text: str, fraction: float, seed: str) -> str:
        rng = np.random.default_rng(stable_hash(seed))
        tokens = np.array(text.split(" "), dtype=object)
        swap = (rng.random(len(tokens)) < fraction) & np.array(["\n" not in t and t != "" for t in tokens], bool)
        tokens[swap] = self.vocab[rng.integers(0, len(self.vocab), int(swap.sum()))]
        return " ".join(tokens)

    def variant(self, source_id: str, kind: str) -> str:
        text = self.text(source_id)
        rng = random.Random(stable_hash(source_id + kind))
        if kind == "norm":  # the same words: case, punctuation, spacing and invisible characters
            words = text.upper().replace(". ", " ; ").split(" ")
            words = [w[: len(w) // 2] + rng.choice(["\u00ad", "\u200b"]) + w[len(w) // 2 :] if len(w) > 4 and rng.random() < 0.05 else w for w in words]
            return "\ufeff" + "  ".join(words)
        if kind == "edit":
            return self._replace(text, 0.01, source_id + kind)
        if kind == "miss":
            return self._replace(text, 0.08, source_id + kind)
        if kind == "trunc":
            lines = text.split("\n")
            keep = max(1, int(len(lines) * 0.92))
            return "\n".join(lines[:keep]) if keep < len(lines) else " ".join(text.split(" ")[: int(len(text.split(" ")) * 0.92)])
        grown = []  # insert
        for w in text.split(" "):
            grown.append(w)
            if rng.random() < 0.01:
                grown.append(str(self.vocab[rng.randrange(len(self.vocab))]))
        return " ".join(grown)

    def text(self, doc_id: str) -> str:
        source, _, kind = doc_id.partition("~")
        if kind:
            return self.variant(source, kind)
        i, r = source[1:].split("r")
        return self.replica(int(i), int(r))

    def ids(self, scale: int) -> tuple[list[str], list[dict]]:
        """Every document id at this scale, and the planted pairs (without their Jaccard yet)."""
        ids, planted = [], []
        for r in range(scale):
            for i in range(len(self.base)):
                doc = f"b{i:04d}r{r:03d}"
                ids.append(doc)
                bucket = stable_hash(doc) % 1000
                if bucket < PLANT_RATE * 1000:
                    planted.append({"src": doc, "dup": f"{doc}~{KINDS[bucket % len(KINDS)]}", "kind": KINDS[bucket % len(KINDS)]})
                elif bucket < (PLANT_RATE + MISS_RATE) * 1000:
                    planted.append({"src": doc, "dup": f"{doc}~miss", "kind": "miss"})
        return ids + [p["dup"] for p in planted], planted


def jaccard(x: str, y: str) -> float:
    from pipeline.dedup.verify import pair_jaccard, shingle_sets
    import pyarrow as pa

    values, offsets = shingle_sets(pa.array([x, y], pa.large_string()), 5)
    return float(pair_jaccard(values, offsets, np.array([0]), np.array([1]))[0])


def build_corpus(corpus: Corpus, scale: int, folder: Path) -> dict:
    """Sources (JSONL.gz) and truth.json under `folder`; reused when complete."""
    truth_path = folder / "truth.json"
    if truth_path.exists():
        return json.loads(truth_path.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    ids, planted = corpus.ids(scale)
    ids.sort(key=stable_hash)  # variants land in other sources than their originals
    text_bytes = 0
    for n, start in enumerate(range(0, len(ids), DOCS_PER_SOURCE)):
        path = folder / f"part-{n:05d}.jsonl.gz"
        with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as fh:
            for doc in ids[start : start + DOCS_PER_SOURCE]:
                text = corpus.text(doc)
                text_bytes += len(text.encode())
                fh.write(json.dumps({"id": doc, "text": text}) + "\n")
    for p in planted:
        p["jaccard"] = round(jaccard(corpus.text(p["src"]), corpus.text(p["dup"])), 4)
    truth = {"scale": scale, "docs": len(ids), "text_bytes": text_bytes, "planted": planted}
    truth_path.write_text(json.dumps(truth))
    return truth


# -- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def snapshot_code(scratch: Path) -> Path:
    """A frozen copy of the project's code for every process of the bench: the working tree
    is edited while an hour-long run goes, and a worker importing newer code than the flow
    planned with is refused (pipeline.fingerprint), rightly."""
    target = scratch / f"code-{time.strftime('%Y%m%d-%H%M%S')}"
    ignore = shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.pyc", ".pytest_cache", "node_modules")
    for name in ("pipeline", "flows", "model", "infra", "bench"):
        shutil.copytree(ROOT / name, target / name, ignore=ignore)
    return target


def spawn(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=env.get("PYTHONPATH", ROOT))


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass


def wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    raise SystemExit(f"timed out waiting for {what}")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status == 200
    except OSError:
        return False


class CpuMonitor:
    """CPU seconds of process trees (psutil, sampled every second: a killed process keeps
    the CPU it had used at its last sample)."""

    def __init__(self, roots: list[int]):
        import psutil

        self.psutil = psutil
        self.roots = roots
        self.last: dict[int, float] = {}
        self.peak_rss: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.sample()
        self.start = dict(self.last)
        self._thread.start()

    def sample(self) -> None:
        for root in self.roots:
            try:
                procs = [self.psutil.Process(root)]
                procs += procs[0].children(recursive=True)
            except self.psutil.NoSuchProcess:
                continue
            for p in procs:
                try:
                    t = p.cpu_times()
                    self.last[p.pid] = t.user + t.system
                    self.peak_rss[p.pid] = max(self.peak_rss.get(p.pid, 0.0), p.memory_info().rss / 2**20)
                except self.psutil.NoSuchProcess:
                    pass

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.sample()

    def cpu_seconds(self) -> float:
        self._stop.set()
        self._thread.join()
        self.sample()
        return sum(v - self.start.get(pid, 0.0) for pid, v in self.last.items())


class Cluster:
    """`dask scheduler` + N `dask worker` processes, as docker/compose.yaml runs them."""

    def __init__(self, n_workers: int, env: dict, logs: Path, task_log: Path):
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        dask = str(Path(sys.executable).parent / "dask")
        task_log.mkdir(parents=True, exist_ok=True)
        self.env = {**env, TASK_LOG_ENV: str(task_log)}
        self.scheduler = spawn([dask, "scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--dashboard-address", f"127.0.0.1:{free_port()}"], self.env, logs / "scheduler.log")
        wait_for(lambda: self._connects(), 120, "the dask scheduler")
        self.workers = [
            spawn([dask, "worker", self.address, "--nworkers", "1", "--nthreads", "1", "--memory-limit", "3GiB", "--dashboard-address", f"127.0.0.1:{free_port()}",
                   "--local-directory", str(logs / f"worker-{i}"), "--preload", str(Path(env["PYTHONPATH"]) / "bench" / "scale.py"), "--name", f"w{i}"],
                  self.env, logs / f"worker-{i}.log")  # fmt: skip
            for i in range(n_workers)
        ]
        wait_for(lambda: self.n_workers() >= n_workers, 180, f"{n_workers} dask workers")

    def _connects(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2):
                return True
        except OSError:
            return False

    def n_workers(self) -> int:
        from distributed import Client

        with Client(self.address, timeout=30) as client:
            return len(client.scheduler_info(n_workers=-1)["workers"])

    def pids(self) -> list[int]:
        return [self.scheduler.pid] + [w.pid for w in self.workers]

    def stop(self) -> None:
        for proc in self.workers + [self.scheduler]:
            stop(proc)


# -- experiments --------------------------------------------------------------------------------


def run_refresh(env: dict, cluster: Cluster, raw: str, dataset: str, workers: int, log: Path, on_progress=None) -> dict:
    """The corpus_refresh flow in its own process against the cluster; CPU of every process."""
    script = (
        "import json, sys; from flows.corpus_refresh import corpus_refresh, CorpusRefreshParams; "
        "p = json.loads(sys.argv[1]); r = corpus_refresh(CorpusRefreshParams(**p)); "
        "print('RESULT ' + json.dumps({k: r[k] for k in ('dataset', 'version', 'rows')}))"
    )
    params = {"sources": [f"{raw}/*.jsonl.gz"], "dataset": dataset, "dedup": BENCH_DEDUP, "runner": {"kind": "dask", "dask_address": cluster.address, "workers": workers}}
    monitor = CpuMonitor(cluster.pids())
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", script, json.dumps(params)], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=env["PYTHONPATH"])
        while proc.poll() is None:
            if on_progress:
                on_progress()
            time.sleep(2)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cluster_cpu = monitor.cpu_seconds()
    flow_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if proc.returncode:
        raise SystemExit(f"the refresh failed (rc {proc.returncode}); see {log}")
    result = next(json.loads(line[7:]) for line in log.read_text().splitlines() if line.startswith("RESULT "))
    return {**result, "wall_s": round(wall, 1), "cpu_s": {"cluster": round(cluster_cpu, 1), "flow_process": round(flow_cpu, 1), "total": round(cluster_cpu + flow_cpu, 1)},
            "process_peak_rss_mb": round(max(monitor.peak_rss.values(), default=0.0), 1)}  # fmt: skip


def task_records(task_log: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(task_log.glob("*.jsonl")) for line in f.read_text().splitlines() if line]


def peak_by_task(records: list[dict], field: str) -> dict:
    """The largest `field` of any task of each name (a stage)."""
    out: dict = {}
    for r in records:
        out[r["task"]] = max(out.get(r["task"], 0.0), r[field])
    return dict(sorted(out.items()))


def output_of(store, result: dict) -> tuple[list[tuple], list[tuple]]:
    """The final version's (id, text digest) rows and its removal table, both sorted."""
    from pipeline.dataset import DatasetVersion
    from pipeline.dedup import read_removals

    version = DatasetVersion(result["dataset"], result["version"], store)
    rows = []
    for batch in version.iter_batches(columns=["id", "text"]):
        ids, texts = batch.column(0).to_pylist(), batch.column(1).to_pylist()
        rows += [(i, hashlib.sha1(t.encode()).hexdigest()) for i, t in zip(ids, texts)]
    removals = read_removals(version)
    table = [tuple(r[c] for c in ("id", "representative", "cluster_id", "stage")) for r in removals.to_pylist()]
    return sorted(rows), sorted(table)


def filtered_texts(doc_ids: list[str], corpus: Corpus) -> dict[str, str]:
    """The text of each document as the refresh's filter chain leaves it (line filters drop
    boilerplate lines, PII is redacted): what dedup compared. Documents the chain drops are
    absent."""
    from pipeline.schema import documents_from_pylist
    from pipeline.steps.chain import build_chain, load_filter_config

    chain = build_chain(load_filter_config(None))
    out: dict[str, str] = {}
    for start in range(0, len(doc_ids), 500):
        rows = [{"id": d, "text": corpus.text(d), "source": "bench"} for d in doc_ids[start : start + 500]]
        table = chain(documents_from_pylist(rows))
        out.update(zip(table.column("id").to_pylist(), table.column("text").to_pylist()))
    return out


def planted_quality(corpus: Corpus, truth: dict, kept: list[tuple], removals: list[tuple]) -> dict:
    """Recall on the planted pairs whose two documents both passed the filters and are still
    at Jaccard >= 0.8 (the dedup threshold) after them (line filters remove boilerplate lines,
    which moves some pairs below it), precision over every removal (a planted duplicate
    removed against its own family, or else J >= 0.8 between the filtered texts: natural
    duplicates of the sample, near misses the filters moved over the threshold), and which
    copy the representative rule kept. Run with the code snapshot the refresh ran with (the
    filters decide what "after the filters" means)."""
    import xxhash

    kept_ids = {r[0] for r in kept}
    rep_of = {r[0]: r[1] for r in removals}
    cluster = {r[0]: r[2] for r in removals}
    passed = kept_ids | set(rep_of)

    def cluster_of(doc: str) -> int:
        return cluster.get(doc, xxhash.xxh64_intdigest(doc.encode()) >> 1)

    both = [p for p in truth["planted"] if p["src"] in passed and p["dup"] in passed]
    family = {p["dup"]: p["kind"] for p in truth["planted"]}
    # removals not explained by a planted duplicate: measured on the filtered texts
    outside = {(doc, rep) for doc, rep in rep_of.items() if doc.split("~")[0] != rep.split("~")[0] or "miss" in (family.get(doc), family.get(rep))}
    texts = filtered_texts(sorted({d for p in both for d in (p["src"], p["dup"])} | {d for pair in outside for d in pair}), corpus)
    for p in both:
        p["jaccard_filtered"] = round(jaccard(texts[p["src"]], texts[p["dup"]]), 4) if p["src"] in texts and p["dup"] in texts else 0.0
    eligible = [p for p in both if p["kind"] != "miss" and p["jaccard"] >= TRUE_MIN_J and p["jaccard_filtered"] >= 0.8]
    moved_below = sum(1 for p in both if p["kind"] != "miss" and p["jaccard"] >= TRUE_MIN_J and p["jaccard_filtered"] < 0.8)
    found = [p for p in eligible if cluster_of(p["src"]) == cluster_of(p["dup"])]
    misses = [p for p in truth["planted"] if p["kind"] == "miss" and p["src"] in passed and p["dup"] in passed]
    merged_misses = [p for p in misses if cluster_of(p["src"]) == cluster_of(p["dup"])]
    correct, checked = 0, 0
    for doc, rep in rep_of.items():
        if (doc, rep) not in outside:
            correct += 1
        else:  # natural duplicates of the sample, near misses the filters moved closer: measured
            checked += 1
            correct += doc in texts and rep in texts and jaccard(texts[doc], texts[rep]) >= 0.8
    precision = correct / len(rep_of) if rep_of else 1.0
    recall = len(found) / len(eligible) if eligible else 1.0
    original_kept = {}
    for kind in KINDS:
        group = [p for p in found if p["kind"] == kind]
        if group:
            original_kept[kind] = round(sum(p["src"] not in rep_of for p in group) / len(group), 3)
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(2 * precision * recall / (precision + recall), 4) if precision + recall else 0.0,
        "planted_pairs_eligible": len(eligible),
        "planted_pairs_below_threshold_after_filters": moved_below,
        "planted_pairs_found": len(found),
        "near_misses_eligible": len(misses),
        "near_misses_merged": len(merged_misses),
        "near_misses_merged_jaccard_after_filters": [p["jaccard_filtered"] for p in merged_misses],
        "removals": len(rep_of),
        "removals_measured": checked,  # outside a planted family, or a near miss
        "original_kept_share": original_kept,
    }


def cpu_by_task(records: list[dict]) -> dict:
    """CPU seconds of all tasks of each name (a stage), and how many ran."""
    out: dict = {}
    for r in records:
        entry = out.setdefault(r["task"], {"tasks": 0, "cpu_s": 0.0})
        entry["tasks"] += 1
        entry["cpu_s"] = round(entry["cpu_s"] + r["cpu_s"], 3)
    return dict(sorted(out.items()))


def filter_step_rates(corpus_dir: Path, docs: int = 2000) -> dict:
    """CPU per document of each filter step, in this process: the first `docs` documents of
    the 1x corpus through the default chain. The chain's own clock per step is wall time, so
    the measured process CPU of the whole chain is split by those shares (one thread, no I/O
    inside the steps: the shares are CPU shares up to scheduling noise)."""
    from pipeline.schema import documents_from_pylist
    from pipeline.steps.chain import build_chain, load_filter_config

    rows = []
    for path in sorted(corpus_dir.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                rows.append({"id": row["id"], "text": row["text"], "source": path.name})
                if len(rows) == docs:
                    break
        if len(rows) == docs:
            break
    table = documents_from_pylist(rows)
    text_mb = sum(len(r["text"].encode()) for r in rows) / 1e6
    chain = build_chain(load_filter_config(None))
    chain(table.slice(0, 50))  # models loaded before the clock starts
    for step in chain.steps:
        step.stats = type(step.stats)(step.stats.name)
    cpu0 = time.process_time()
    for start in range(0, table.num_rows, 500):
        chain(table.slice(start, 500))
    cpu = time.process_time() - cpu0
    stats = chain.stats()
    wall = sum(s.seconds for s in stats) or 1.0
    steps = {s.name: {"docs_in": s.docs_in, "kept": s.kept, "cpu_s": round(cpu * s.seconds / wall, 3),
                      "docs_per_cpu_s": round(s.docs_in / (cpu * s.seconds / wall), 1) if s.seconds else None} for s in stats}  # fmt: skip
    return {"docs": len(rows), "text_mb": round(text_mb, 2), "chain_cpu_s": round(cpu, 2), "chain_docs_per_cpu_s": round(len(rows) / cpu, 1), "steps": steps,
            "kept": stats[-1].kept if stats else len(rows)}  # fmt: skip


def dedup_report(store, result: dict) -> dict:
    from pipeline.dataset import DatasetVersion

    report = DatasetVersion(result["dataset"], result["version"], store).manifest().extra["refresh"]
    keep = ("partitions", "resumed", "cpu_seconds", "objects_written", "bytes_written", "pairs", "pairs_verified", "pairs_rejected", "edges", "removed", "clusters",
            "largest_cluster", "docs", "texts_sent")  # fmt: skip
    dedup = {stage: ({k: v for k, v in c.items() if k in keep} if isinstance(c, dict) else c) for stage, c in report["dedup"].items()}
    return {"documents_read": report["documents_read"], "after_filters": report["after_filters"], "documents": report["documents"], "dedup": dedup}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", default="1,10,100")
    ap.add_argument("--scratch", default=os.environ.get("TOKENMILL_BENCH_SCRATCH", "/work/scratch/h16"))
    ap.add_argument("--mid-scale", type=int, default=10, help="scale of the speed-up and kill experiments")
    ap.add_argument("--skip-speedup", action="store_true")
    ap.add_argument("--skip-kill", action="store_true")
    ap.add_argument("--summary-only", action="store_true", help="print the summary of the experiments already measured")
    ap.add_argument("--requality", action="store_true", help="with --summary-only: measure the planted-pair quality of each run again from its output")
    args = ap.parse_args()
    scratch = Path(args.scratch)
    results_dir = scratch / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    if args.summary_only:
        if args.requality:
            requality(scratch)
        print(json.dumps(summary(results_dir)))
        return
    os.environ.update(TOKENMILL_HOME=str(scratch / "home"), PREFECT_HOME=str(scratch / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
                      PREFECT_LOGGING_LEVEL="WARNING", TOKENMILL_SHARED=str(SHARED))  # fmt: skip
    from pipeline.s3server import start_s3_server
    from pipeline.steps.classifier import ensure_toxicity_model
    from pipeline.storage import ObjectStore

    ensure_toxicity_model()  # trained once, before any timing (cached under TOKENMILL_HOME)
    corpus = Corpus()
    server = start_s3_server(scratch / "s3")
    prefect_port = free_port()
    code = snapshot_code(scratch)
    env = {**os.environ, **server.env(), "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api", "PYTHONPATH": str(code)}
    logs = scratch / "logs"
    logs.mkdir(exist_ok=True)
    prefect = spawn([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)], env, logs / "prefect-server.log")
    store = ObjectStore(server.settings)
    store.ensure_bucket("bench")
    try:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{prefect_port}/api/health"), 300, "the Prefect server")
        scales = [int(s) for s in args.scales.split(",")]
        experiments = [(f"scale-{k}", k, 2, False) for k in scales if k != max(scales)]
        if not args.skip_speedup:
            experiments.append(("workers-4", args.mid_scale, 4, False))
        if not args.skip_kill:
            experiments.append(("kill", args.mid_scale, 2, True))
        experiments.append((f"scale-{max(scales)}", max(scales), 2, False))  # the long one last
        for name, scale, workers, kill in experiments:
            out = results_dir / f"{name}.json"
            if out.exists():
                continue
            truth = build_corpus(corpus, scale, scratch / f"corpus-{scale}")
            raw = f"s3://bench/raw-{scale}"
            if not store.list(raw + "/"):
                for path in sorted((scratch / f"corpus-{scale}").glob("*.jsonl.gz")):
                    store.upload_file(path, f"{raw}/{path.name}")
            run_dir = logs / name
            shutil.rmtree(run_dir, ignore_errors=True)  # an earlier, unfinished attempt's task records are not this run's
            run_dir.mkdir()
            cluster = Cluster(workers, env, run_dir, run_dir / "tasks")
            dataset = f"s3://bench/datasets/{name}-{int(time.time())}"
            killed: list = []

            def kill_one_worker() -> None:
                if killed or not store.list(f"{dataset}/_stages/dedup/"):
                    return
                if not any("/_done/signatures/" in o.uri for o in store.list(f"{dataset}/_stages/dedup/")):
                    return
                victim = cluster.workers[0]
                os.killpg(victim.pid, signal.SIGKILL)
                killed.append({"worker": victim.pid, "at_s": round(time.monotonic() - started, 1)})

            started = time.monotonic()
            load_before = round(os.getloadavg()[0], 2)
            try:
                result = run_refresh(env, cluster, raw, dataset, workers, run_dir / "flow.log", kill_one_worker if kill else None)
            finally:
                cluster.stop()
            records = task_records(run_dir / "tasks")
            entry = {"experiment": name, "scale": scale, "workers": workers, "docs": truth["docs"], "text_mb": round(truth["text_bytes"] / 1e6, 1), **result,
                     "docs_per_cpu_s": round(truth["docs"] / result["cpu_s"]["total"], 2), "tasks": len(records),
                     "peak_rss_mb_by_task": peak_by_task(records, "peak_rss_mb"), "own_peak_mb_by_task": peak_by_task(records, "own_peak_mb"),
                     "task_cpu_s": round(sum(r["cpu_s"] for r in records), 1), "cpu_by_task": cpu_by_task(records), "load_average_1min": [load_before, round(os.getloadavg()[0], 2)]}  # fmt: skip
            kept, removals = output_of(store, result)
            (run_dir / "output.json").write_text(json.dumps({"kept": kept, "removals": removals}))
            if kill:
                reference = json.loads((logs / f"scale-{scale}" / "output.json").read_text())
                entry["killed"] = killed
                entry["same_output_as_unkilled"] = reference == json.loads(json.dumps({"kept": kept, "removals": removals}))
            else:
                entry["quality"] = planted_quality(corpus, truth, kept, removals)
                entry["report"] = dedup_report(store, result)
            out.write_text(json.dumps(entry))
            print(json.dumps(entry), flush=True)
        steps_out = results_dir / "filter-steps.json"
        if not steps_out.exists():
            build_corpus(corpus, 1, scratch / "corpus-1")
            rates = filter_step_rates(scratch / "corpus-1")
            steps_out.write_text(json.dumps(rates))
            print(json.dumps({"filter_steps": rates}), flush=True)
    finally:
        stop(prefect)
        server.stop()
    print(json.dumps(summary(results_dir)))


def requality(scratch: Path) -> None:
    """The planted-pair quality of every finished scale run, again from its recorded output
    (after a change to how quality is measured; the runs themselves are not repeated)."""
    os.environ.setdefault("TOKENMILL_HOME", str(scratch / "home"))
    corpus = Corpus()
    for path in sorted((scratch / "results").glob("scale-*.json")):
        entry = json.loads(path.read_text())
        output = json.loads((scratch / "logs" / path.stem / "output.json").read_text())
        truth = json.loads((scratch / f"corpus-{entry['scale']}" / "truth.json").read_text())
        entry["quality"] = planted_quality(corpus, truth, [tuple(r) for r in output["kept"]], [tuple(r) for r in output["removals"]])
        path.write_text(json.dumps(entry))


def summary(results_dir: Path) -> dict:
    runs = {p.stem: json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json")) if p.stem != "filter-steps"}
    for name, r in runs.items():  # results measured before the per-stage CPU was kept: from the task log
        if "cpu_by_task" not in r and (results_dir.parent / "logs" / name / "tasks").exists():
            r["cpu_by_task"] = cpu_by_task(task_records(results_dir.parent / "logs" / name / "tasks"))
    scales = {r["scale"]: r for n, r in runs.items() if n.startswith("scale-")}
    label = {k: f"{k}x" for k in scales}
    out: dict = {
        "largest_scale_measured": f"{max(scales)}x" if scales else None,  # the target is 100x (>= 250,000 documents)
        "docs": {label[k]: r["docs"] for k, r in sorted(scales.items())},
        "docs_per_cpu_s": {label[k]: r["docs_per_cpu_s"] for k, r in sorted(scales.items())},
        "peak_rss_mb_per_task": {label[k]: max(r["peak_rss_mb_by_task"].values()) for k, r in sorted(scales.items())},
        "peak_rss_mb_by_stage": {label[k]: r["peak_rss_mb_by_task"] for k, r in sorted(scales.items())},
        "own_peak_mb_per_task": {label[k]: max(r["own_peak_mb_by_task"].values()) for k, r in sorted(scales.items())},
        "own_peak_mb_by_stage": {label[k]: r["own_peak_mb_by_task"] for k, r in sorted(scales.items())},
        "load_average_1min": {n: r["load_average_1min"] for n, r in runs.items()},
        "f1_planted": {label[k]: r["quality"]["f1"] for k, r in sorted(scales.items())},
        "precision_planted": {label[k]: r["quality"]["precision"] for k, r in sorted(scales.items())},
        "recall_planted": {label[k]: r["quality"]["recall"] for k, r in sorted(scales.items())},
        "original_kept_share": {label[k]: r["quality"]["original_kept_share"] for k, r in sorted(scales.items())},
        "wall_s": {label[k]: r["wall_s"] for k, r in sorted(scales.items())},
        "cpu_s": {label[k]: r["cpu_s"] for k, r in sorted(scales.items())},
        # per CPU-second of the stage's tasks: input documents for the filters, documents
        # after the filters (what dedup reads) for the dedup stages
        "docs_per_task_cpu_s_by_stage": {label[k]: {t: round((r["report"]["after_filters"] if t.startswith("dedup-") else r["docs"]) / c["cpu_s"], 1)
                                                    for t, c in r.get("cpu_by_task", {}).items() if c["cpu_s"] >= 0.05}
                                         for k, r in sorted(scales.items())},  # fmt: skip
        "after_filters": {label[k]: r["report"]["after_filters"] for k, r in sorted(scales.items())},
        "tasks_by_stage": {label[k]: {t: c["tasks"] for t, c in r.get("cpu_by_task", {}).items()} for k, r in sorted(scales.items())},
    }
    steps = results_dir / "filter-steps.json"
    if steps.exists():
        rates = json.loads(steps.read_text())
        out["filter_steps_docs_per_cpu_s"] = {"chain": rates["chain_docs_per_cpu_s"], **{n: s["docs_per_cpu_s"] for n, s in rates["steps"].items()}}
    if "workers-4" in runs:
        four = runs["workers-4"]
        two = scales.get(four["scale"])
        if two:
            out["speedup_2_to_4_workers"] = round(two["wall_s"] / four["wall_s"], 2)
            out["cpu_s_2_vs_4_workers"] = [two["cpu_s"]["total"], four["cpu_s"]["total"]]
            out["machine_cores"] = os.cpu_count()
    if "kill" in runs:
        out["kill_one_worker"] = {k: runs["kill"][k] for k in ("killed", "same_output_as_unkilled", "wall_s")}
    return out


if __name__ == "__main__":
    main()
