"""Lineage: which dataset versions held a document, and which training runs read them, so a
takedown can say which models were trained on removed data.

Training runs record the corpus version they read (`record_training_run`, called by the
train flow before it tokenizes) under the dataset itself::

    <dataset>/_lineage/runs/<version>/<run name>.json

`find(url_or_id)` scans the `id` and `url` columns (nothing else) of every shard of every
sealed version of the datasets under the data root, each shard once however many versions
list it, and joins the versions that hold the document with the run records.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.dataset import DatasetVersion, canonical_json, read_parquet, sealed_versions
from pipeline.removals import url_keys
from pipeline.settings import data_root
from pipeline.storage import ObjectStore, join

MAX_DATASET_DEPTH = 4  # dataset names have at most four `/`-separated segments (pipeline.names)
SCAN_THREADS = 8


def runs_uri(dataset_uri: str, version: str) -> str:
    return join(dataset_uri, "_lineage", "runs", version)


def record_training_run(dataset_uri: str, version: str, run_name: str, outputs_uri: str, store: ObjectStore | None = None) -> str:
    """Note that training run `run_name` reads `dataset_uri@version` (idempotent)."""
    store = store or ObjectStore()
    uri = join(runs_uri(dataset_uri, version), f"{run_name}.json")
    if store.head(uri) is None:
        body = {"run": run_name, "dataset": dataset_uri, "version": version, "outputs": outputs_uri, "recorded_at": time.time()}
        store.put_bytes(uri, canonical_json(body).encode(), content_type="application/json")
    return uri


def training_runs(dataset_uri: str, version: str, store: ObjectStore) -> list[dict]:
    return [json.loads(store.get_bytes(o.uri)) for o in store.list(runs_uri(dataset_uri, version) + "/") if o.uri.endswith(".json")]


def find_datasets(root: str, store: ObjectStore) -> list[str]:
    """Dataset URIs under `<root>/datasets/`: prefixes with a `_sealed/` folder, found by
    delimiter listings (never a listing of the data itself)."""
    found, level = [], [join(root, "datasets") + "/"]
    for _ in range(MAX_DATASET_DEPTH):
        deeper = []
        for prefix in level:
            for child in store.list_prefixes(prefix):
                name = child.rstrip("/").rsplit("/", 1)[-1]
                if name.startswith("_") or name == "versions":
                    continue
                if join(child, "_sealed") + "/" in store.list_prefixes(child):
                    found.append(child.rstrip("/"))
                deeper.append(child)
        level = deeper
    return sorted(found)


def _looks_like_url(value: str) -> bool:
    return "://" in value or value.startswith("//")


def _shard_holds(store: ObjectStore, shard_uri: str, value: str) -> bool:
    table = read_parquet(store, shard_uri, columns=["id", "url"])
    if pc.any(pc.equal(table.column("id"), value)).as_py():
        return True
    if not _looks_like_url(value):
        return False
    key = url_keys(pa.array([value]))[0][0]
    return bool(pc.any(pc.equal(url_keys(table.column("url"))[0], key)).as_py())


def find(url_or_id: str, *, datasets: list[str] | None = None, store: ObjectStore | None = None) -> dict:
    """{"versions": [{dataset, version, sealed_at, shards}], "training_runs": [run records]}
    for a document id or URL (URLs compared normalised, as removal requests are)."""
    store = store or ObjectStore()
    datasets = datasets if datasets is not None else find_datasets(data_root(), store)
    holding: dict[str, bool] = {}
    versions, runs = [], []
    for dataset in datasets:
        for marker in sealed_versions(dataset, store):
            manifest = DatasetVersion(dataset, marker["version"], store).sealed_manifest()
            if manifest is None or manifest.extra.get("kind") == "tokens":
                continue
            todo = [s["uri"] for s in manifest.shards if s["uri"] not in holding]
            with ThreadPoolExecutor(max_workers=SCAN_THREADS) as pool:
                holding.update(zip(todo, pool.map(lambda uri: _shard_holds(store, uri, url_or_id), todo)))
            hits = [s["uri"] for s in manifest.shards if holding[s["uri"]]]
            if hits:
                versions.append({"dataset": dataset, "version": marker["version"], "sealed_at": manifest.sealed_at, "shards": hits})
                runs += training_runs(dataset, marker["version"], store)
    return {"query": url_or_id, "versions": versions, "training_runs": runs}
