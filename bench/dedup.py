"""Dedup benchmark: quality (precision and recall reported separately, against exact Jaccard)
and cost (documents per CPU-second per stage, peak RSS per stage) of pipeline.dedup, at 1x
and 8x corpus size, side by side with datatrove 0.10's minhash pipeline (when a Python with
it is given) and datasketch's MinHash (`update_batch`, its fastest path) + MinHashLSH.

    .venv/bin/python bench/dedup.py [--scales 1,8] [--datatrove-python /tmp/dtvenv/bin/python]

Corpus: the shared web sample (2,478 real pages); at scale k each page gets k-1 replicas with
half their words replaced by corpus words (far from everything), and 270*k source pages get a
planted variant at a target Jaccard (1.0 as a case/punctuation-changed exact copy, then 0.95
... 0.5) made by random word edits, insertions or boilerplate swaps; the exact 5-gram Jaccard
of every planted pair is measured, not assumed. Recall: planted pairs with Jaccard >= the
threshold that end up in one cluster. Precision: removed documents whose exact Jaccard with
their representative is >= the threshold (natural duplicates in the sample count when they
are truly similar). Verification and that metric share the pipeline's shingler, so precision
is partly built in: `precision_independent` measures the same with another tokenizer
(Python's `\w+` words of the lower-cased text, 5-gram sets). `original_kept_share`: among
found planted pairs, how often the representative rule kept the source rather than the
variant, by kind of variant. The pipeline runs in a fresh subprocess; each stage's CPU
(getrusage) and peak RSS (VmHWM, reset per stage through /proc/self/clear_refs) are its own.
Work data on the local disk (same for datatrove). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.dataset import DatasetVersion  # noqa: E402
from pipeline.dedup import DedupConfig, DedupJob, read_removals, run_stages, serial_map, shingle_hash32, shingle_hashes, normalize, shingles  # noqa: E402
from pipeline.schema import documents_from_pylist  # noqa: E402
from pipeline.storage import ObjectStore  # noqa: E402

SHARED = Path(os.environ.get("TOKENMILL_SHARED", ROOT.parent / "shared"))
LEVELS = [1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5]
PLANT_PER_LEVEL = 30
DOCS_PER_SHARD = 1000
BENCH_CONFIG = dict(num_perm=120, threshold=0.8, verify_jaccard=True)  # bands from the threshold: 20 x 6
DEFAULT_CONFIG = dict(num_perm=128, threshold=0.8)  # datasketch's optimal 9 x 13, no verification


def cpu_seconds() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


# -- corpus -------------------------------------------------------------------------------------


def load_web() -> list[dict]:
    with gzip.open(SHARED / "corpora/web/web_sample.jsonl.gz", "rt", encoding="utf-8") as fh:
        return [{"id": f"w{i:05d}", "text": json.loads(line)["text"]} for i, line in enumerate(fh)]


def exact_jaccard(xs: list[str], ys: list[str], ngram: int = 5) -> np.ndarray:
    sx = shingle_hashes(normalize(pa.array(xs, pa.large_string())), ngram)
    sy = shingle_hashes(normalize(pa.array(ys, pa.large_string())), ngram)
    out = np.zeros(len(xs))
    for i in range(len(xs)):
        a, b = np.unique(sx.of(i)), np.unique(sy.of(i))
        inter = len(np.intersect1d(a, b, assume_unique=True))
        union = len(a) + len(b) - inter
        out[i] = inter / union if union else 0.0
    return out


def independent_jaccard(x: str, y: str, ngram: int = 5) -> float:
    """5-gram Jaccard with another tokenizer than the pipeline's (Python's \\w+ words)."""
    def grams(t: str) -> set:
        words = re.findall(r"\w+", t.lower())
        return {tuple(words[i : i + ngram]) for i in range(max(1, len(words) - ngram + 1))} if words else set()

    a, b = grams(x), grams(y)
    return len(a & b) / len(a | b) if a | b else 0.0


def perturb(text: str, kind: str, strength: float, rng: random.Random, vocab: list[str], other: str) -> str:
    lines = text.split("\n")
    if kind == "boilerplate":  # swap header/footer lines for another page's, then edit words
        k = max(1, len(lines) // 8)
        olines = other.split("\n")
        lines = olines[:k] + lines[k:-k] + olines[-k:] if len(lines) > 2 * k else lines
        kind = "edit"
    out = []
    for line in lines:
        words = line.split(" ")
        if kind == "edit":
            words = [rng.choice(vocab) if w and rng.random() < strength else w for w in words]
        else:  # insertions
            grown = []
            for w in words:
                grown.append(w)
                if rng.random() < strength:
                    grown.append(rng.choice(vocab))
            words = grown
        out.append(" ".join(words))
    return "\n".join(out)


def build_corpus(scale: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Documents and the planted pairs (src id, variant id, exact Jaccard)."""
    rng = random.Random(seed)
    base = load_web()
    vocab = sorted({w for d in base[:400] for w in d["text"].split() if w.isalpha()})
    docs = list(base)
    for r in range(1, scale):
        docs += [{"id": f"{d['id']}r{r}", "text": perturb(d["text"], "edit", 0.5, rng, vocab, "")} for d in base]
    eligible = [d for d in docs if len(d["text"].split()) >= 80]
    sources = rng.sample(eligible, PLANT_PER_LEVEL * len(LEVELS) * scale)
    strengths = np.array([0.0, 0.005, 0.01, 0.02, 0.035, 0.05, 0.07, 0.1, 0.14, 0.2])
    planted, pairs = [], []
    for i, src in enumerate(sources):
        target = LEVELS[i % len(LEVELS)]
        if target == 1.0:
            text = src["text"].upper().replace(". ", " ; ").replace("\n", "  \n")
            planted.append({"id": f"{src['id']}~d", "text": text})
            pairs.append({"src": src["id"], "dup": f"{src['id']}~d", "jaccard": 1.0, "kind": "exact"})
            continue
        kind = ["edit", "insert", "boilerplate"][i % 3]
        other = rng.choice(base)["text"]
        tries = [perturb(src["text"], kind, s, random.Random(seed * 7919 + i), vocab, other) for s in strengths]
        js = exact_jaccard([src["text"]] * len(tries), tries)
        best = int(np.argmin(np.abs(js - target)))
        planted.append({"id": f"{src['id']}~d", "text": tries[best]})
        pairs.append({"src": src["id"], "dup": f"{src['id']}~d", "jaccard": float(js[best]), "kind": kind})
    return docs + planted, pairs


def write_shards(docs: list[dict], folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    order = list(range(len(docs)))
    random.Random(1).shuffle(order)  # planted copies land in other shards than their sources
    uris = []
    for s in range(0, len(order), DOCS_PER_SHARD):
        rows = [{**docs[i], "source": "bench"} for i in order[s : s + DOCS_PER_SHARD]]
        path = folder / f"part-{s // DOCS_PER_SHARD:05d}.parquet"
        pq.write_table(documents_from_pylist(rows), path, compression="zstd")
        uris.append(str(path))
    return uris


# -- the pipeline, in its own process ----------------------------------------------------------


def run_child(uris: list[str], work: str, out: str, config: dict) -> dict:
    """(In a child process.) Every stage in order; per stage: CPU seconds and peak RSS."""
    job = DedupJob(work, DedupConfig(**config), out, "v1")
    serial = serial_map(job)
    per_stage: dict = {}

    def measured(stage: str, items: list) -> list:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # VmHWM := current RSS: the peak below is this stage's
        start = cpu_seconds()
        result = serial(stage, items)
        entry = per_stage.setdefault(stage, {"cpu_s": 0.0, "peak_rss_mb": 0.0})
        entry["cpu_s"] += cpu_seconds() - start
        entry["peak_rss_mb"] = max(entry["peak_rss_mb"], peak_rss_mb())
        return result

    counts = run_stages(job, uris, measured)
    return {"stages": per_stage, "candidates": counts["candidates"], "verify": counts["verify"], "components": counts["components"], "audit": counts["audit"]}


def peak_rss_mb() -> float:
    """This process's peak RSS since the last reset (VmHWM)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_pipeline(uris: list[str], tmp: Path, config: dict, label: str) -> dict:
    work, out = str(tmp / f"work-{label}"), str(tmp / f"out-{label}")
    args = json.dumps({"uris": uris, "work": work, "out": out, "config": config})
    proc = subprocess.run([sys.executable, __file__, "--child", args], capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"the dedup run failed:\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    report["removals"] = read_removals(DatasetVersion(out, "v1", ObjectStore())).to_pylist()
    return report


def quality(docs: list[dict], pairs: list[dict], removals: list[dict], threshold: float) -> dict:
    text = {d["id"]: d["text"] for d in docs}
    rep_of = {r["id"]: r["representative"] for r in removals}
    cluster = {r["id"]: r["cluster_id"] for r in removals}
    for r in removals:
        cluster.setdefault(r["representative"], r["cluster_id"])
    js = exact_jaccard([text[r["id"]] for r in removals], [text[r["representative"]] for r in removals]) if removals else np.zeros(0)
    tp_removed = int((js >= threshold - 1e-9).sum())
    truth = [p for p in pairs if p["jaccard"] >= threshold]
    found = sum(1 for p in truth if p["dup"] in cluster and cluster.get(p["src"]) == cluster[p["dup"]])
    precision = tp_removed / len(removals) if removals else 1.0
    recall = found / len(truth) if truth else 1.0
    independent = [independent_jaccard(text[r["id"]], text[r["representative"]]) for r in removals]
    found_pairs = [p for p in truth if p["dup"] in cluster and cluster.get(p["src"]) == cluster[p["dup"]]]
    original_kept = {}
    for kind in sorted({p["kind"] for p in found_pairs}):
        group = [p for p in found_pairs if p["kind"] == kind]
        original_kept[kind] = round(sum(p["src"] not in rep_of for p in group) / len(group), 3)
    by_level = {}
    for level in LEVELS:
        group = [p for p in pairs if abs(p["jaccard"] - level) <= 0.025]
        if group:
            by_level[f"{level:.2f}"] = round(sum(p["dup"] in cluster and cluster.get(p["src"]) == cluster[p["dup"]] for p in group) / len(group), 3)
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(2 * precision * recall / (precision + recall), 4) if precision + recall else 0.0,
        "precision_independent": round(sum(j >= threshold - 1e-9 for j in independent) / len(removals), 4) if removals else 1.0,
        "original_kept_share": original_kept,
        "removed": len(removals),
        "true_pairs": len(truth),
        "merged_share_by_jaccard": by_level,  # planted pairs at each level that ended in one cluster
    }


# -- comparisons ---------------------------------------------------------------------------------

DATATROVE_SCRIPT = r"""
import json, resource, sys
def cpu():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature, MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter
inp, tmp = sys.argv[1], sys.argv[2]
cfg = MinhashConfig(num_buckets=14, hashes_per_bucket=8)
run = lambda pipeline, tasks: LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=1, logging_dir=f"{tmp}/logs/{len(times)}").run()
times = {}
t = cpu(); run([JsonlReader(inp), MinhashDedupSignature(output_folder=f"{tmp}/sigs", config=cfg)], 1); times["signatures"] = cpu() - t
t = cpu(); run([MinhashDedupBuckets(input_folder=f"{tmp}/sigs", output_folder=f"{tmp}/buckets", config=cfg)], cfg.num_buckets); times["buckets"] = cpu() - t
t = cpu(); run([MinhashDedupCluster(input_folder=f"{tmp}/buckets", output_folder=f"{tmp}/remove", config=cfg)], 1); times["cluster"] = cpu() - t
t = cpu(); run([JsonlReader(inp), MinhashDedupFilter(input_folder=f"{tmp}/remove"), JsonlWriter(f"{tmp}/out")], 1); times["filter"] = cpu() - t
print(json.dumps(times))
"""


def run_datatrove(python: str, docs: list[dict], tmp: Path) -> dict:
    folder = tmp / "dt-in"
    folder.mkdir()
    with open(folder / "docs.jsonl", "w", encoding="utf-8") as fh:
        for d in docs:
            fh.write(json.dumps({"id": d["id"], "text": d["text"]}) + "\n")
    before = cpu_seconds()
    proc = subprocess.run([python, "-c", DATATROVE_SCRIPT, str(folder), str(tmp / "dt")], capture_output=True, text=True, check=False)
    total = cpu_seconds() - before
    if proc.returncode:
        return {"error": proc.stderr[-2000:]}
    stage_cpu = json.loads(proc.stdout.strip().splitlines()[-1])
    pipeline_cpu = sum(stage_cpu.values())
    return {"docs": len(docs), "stage_cpu_s": {k: round(v, 2) for k, v in stage_cpu.items()}, "cpu_s": round(pipeline_cpu, 2), "cpu_s_with_startup": round(total, 2), "docs_per_cpu_s": round(len(docs) / pipeline_cpu, 1)}


def run_datasketch(docs: list[dict], config: DedupConfig, n: int = 300) -> dict:
    """datasketch's own fastest way: MinHash.update_batch per document (the same signatures),
    MinHashLSH insert + query, in-process."""
    from datasketch import MinHash, MinHashLSH

    sample = docs[:n]
    start = cpu_seconds()
    lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm, params=config.band_params)
    sketches = []
    for d in sample:
        m = MinHash(num_perm=config.num_perm, seed=config.seed, hashfunc=shingle_hash32)
        m.update_batch(shingles(d["text"], config.ngram))
        lsh.insert(d["id"], m)
        sketches.append(m)
    for d, m in zip(sample, sketches):
        lsh.query(m)
    cpu = cpu_seconds() - start
    return {"docs": len(sample), "cpu_s": round(cpu, 2), "docs_per_cpu_s": round(len(sample) / cpu, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="1,8")
    parser.add_argument("--datatrove-python", default=os.environ.get("TOKENMILL_DATATROVE_PYTHON", "/tmp/dtvenv/bin/python"))
    parser.add_argument("--skip-datatrove", action="store_true")
    parser.add_argument("--datasketch-docs", type=int, default=300)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(run_child(spec["uris"], spec["work"], spec["out"], spec["config"]), default=str))
        return

    summary: dict = {"config": BENCH_CONFIG, "per_scale": {}}
    tmp = Path(tempfile.mkdtemp(prefix="bench-dedup-"))
    try:
        for scale in [int(s) for s in args.scales.split(",")]:
            t0 = time.time()
            docs, pairs = build_corpus(scale)
            uris = write_shards(docs, tmp / f"in-{scale}")
            print(f"scale {scale}: {len(docs)} docs in {len(uris)} shards, {len(pairs)} planted pairs (built in {time.time() - t0:.0f}s)", flush=True)
            report = run_pipeline(uris, tmp, BENCH_CONFIG, f"{scale}")
            q = quality(docs, pairs, report["removals"], BENCH_CONFIG["threshold"])
            cpu = {g: round(r["cpu_s"], 2) for g, r in report["stages"].items()}
            total = sum(cpu.values())
            entry = {
                "docs": len(docs),
                **q,
                "cpu_s": cpu,
                "docs_per_cpu_s": round(len(docs) / total, 1),
                "docs_per_cpu_s_by_stage": {g: round(len(docs) / c, 1) for g, c in cpu.items() if c >= 0.05},
                "peak_rss_mb": {g: round(r["peak_rss_mb"], 1) for g, r in report["stages"].items()},
                "clusters": report["audit"],
                "pairs_verified": sum(v["pairs_verified"] for v in report["verify"]),
                "component_rounds": len(report["components"]),
            }
            if scale == 1:
                default = run_pipeline(uris, tmp, DEFAULT_CONFIG, "default")
                entry["default_config_quality"] = {"config": DEFAULT_CONFIG, **quality(docs, pairs, default["removals"], 0.8)}
                entry["datasketch"] = run_datasketch(docs, DedupConfig(**BENCH_CONFIG), args.datasketch_docs)
                if not args.skip_datatrove and Path(args.datatrove_python).exists():
                    entry["datatrove"] = run_datatrove(args.datatrove_python, docs, tmp)
            summary["per_scale"][str(scale)] = entry
            print(json.dumps({f"scale_{scale}": entry}), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    first = summary["per_scale"][min(summary["per_scale"], key=int)]
    dt = first.get("datatrove", {})
    ds = first.get("datasketch", {})
    summary.update(
        precision=first["precision"],
        precision_independent=first["precision_independent"],
        recall=first["recall"],
        f1=first["f1"],
        original_kept_share=first["original_kept_share"],
        docs_per_cpu_s=first["docs_per_cpu_s"],
        ratio_vs_datatrove=round(first["docs_per_cpu_s"] / dt["docs_per_cpu_s"], 1) if dt.get("docs_per_cpu_s") else None,
        ratio_vs_datasketch=round(first["docs_per_cpu_s"] / ds["docs_per_cpu_s"], 1) if ds.get("docs_per_cpu_s") else None,
        ratio_vs_datasketch_signatures_stage=round(first["docs_per_cpu_s_by_stage"]["signatures"] / ds["docs_per_cpu_s"], 1) if ds.get("docs_per_cpu_s") else None,
        peak_rss_mb={s: e["peak_rss_mb"] for s, e in summary["per_scale"].items()},
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
