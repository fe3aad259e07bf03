"""Garbage collection of a dataset: what crashed or superseded runs left behind, and
intermediates a finished refresh no longer needs.

Run under the dataset's lease (`pipeline.lease`): nothing here may race a writer. What goes:
  * objects under a sealed version's `data/` and `quarantine/` that its manifest does not list,
    and commit records left beside a sealed manifest; a seal that stopped before its marker
    or `latest` pointer is finished (`DatasetVersion.finish_seal`);
  * `_stages/dedup/<V>/` and `_stages/filtered/versions/<V>/` once V is sealed (any name
    under those prefixes is treated alike: stages may add files freely);
  * per-source filter outputs (`_stages/sources/versions/<K>/`) that none of the newest
    `keep_stage_versions` sealed versions used: the cache that makes the next refresh
    incremental is kept, everything older goes;
  * with `unsealed=True`, versions that were never sealed and their stages (a crashed run
    re-run later starts over instead of resuming).
"""

from __future__ import annotations

from pipeline.dataset import DatasetVersion, Manifest, sealed_versions
from pipeline.storage import ObjectStore, join

STAGE_VIEWS = (("_stages", "filtered", "versions"), ("_stages", "dedup"))


def drop_source_output(cache: DatasetVersion) -> int:
    """Delete one per-source filter output (after a copy without removed documents exists)."""
    return cache.store.delete_prefix(cache.uri + "/")


def _version_ids(store: ObjectStore, prefix: str) -> list[str]:
    return [p.rstrip("/").rsplit("/", 1)[-1] for p in store.list_prefixes(prefix)]


def kept_source_outputs(dataset_uri: str, keep_stage_versions: int, store: ObjectStore) -> set[str]:
    """Source-output keys used by the newest `keep_stage_versions` sealed refreshes."""
    keep: set[str] = set()
    used = 0
    for marker in reversed(sealed_versions(dataset_uri, store)):
        if used >= keep_stage_versions:
            break
        manifest = DatasetVersion(dataset_uri, marker["version"], store).sealed_manifest()
        sources = (manifest.extra.get("stages") or {}).get("sources") if manifest else None
        if sources is not None:
            keep.update(sources)
            used += 1
    return keep


def collect_refresh_stages(dataset_uri: str, version: str, *, keep_stage_versions: int = 1, store: ObjectStore | None = None) -> dict:
    """After version `version` sealed: its view and dedup intermediates, and source outputs
    outside the retention window. Returns how many objects went where."""
    store = store or ObjectStore()
    deleted = {"stages": sum(store.delete_prefix(join(dataset_uri, *parts, version) + "/") for parts in STAGE_VIEWS)}
    deleted["source_outputs"] = _collect_source_outputs(dataset_uri, keep_stage_versions, store, dry_run=False)
    return deleted


def _collect_source_outputs(dataset_uri: str, keep_stage_versions: int, store: ObjectStore, *, dry_run: bool) -> int:
    keep = kept_source_outputs(dataset_uri, keep_stage_versions, store)
    root = join(dataset_uri, "_stages", "sources", "versions")
    doomed = [join(root, key) + "/" for key in _version_ids(store, root + "/") if key not in keep]
    return sum(len(store.list(p)) if dry_run else store.delete_prefix(p) for p in doomed)


def collect(dataset_uri: str, *, keep_stage_versions: int = 1, unsealed: bool = False, dry_run: bool = False, store: ObjectStore | None = None) -> dict:
    """Everything in the module docstring, for one dataset. Returns counts per kind (with
    `dry_run`, what would go)."""
    store = store or ObjectStore()
    report = {"orphans": 0, "seals_finished": [], "stages": 0, "source_outputs": 0, "unsealed_versions": [], "commit_records": 0}
    sealed: set[str] = set()
    for version_id in _version_ids(store, join(dataset_uri, "versions") + "/"):
        version = DatasetVersion(dataset_uri, version_id, store)
        manifest = version.sealed_manifest()
        if manifest is None:
            if unsealed:
                report["unsealed_versions"].append(version_id)
                if not dry_run:
                    store.delete_prefix(version.uri + "/")
            continue
        sealed.add(version_id)
        _collect_sealed(version, manifest, report, dry_run)
    for parts in STAGE_VIEWS:
        root = join(dataset_uri, *parts)
        for version_id in _version_ids(store, root + "/"):
            if version_id in sealed or unsealed:
                prefix = join(root, version_id) + "/"
                report["stages"] += len(store.list(prefix)) if dry_run else store.delete_prefix(prefix)
    report["source_outputs"] = _collect_source_outputs(dataset_uri, keep_stage_versions, store, dry_run=dry_run)
    return report


def _collect_sealed(version: DatasetVersion, manifest: Manifest, report: dict, dry_run: bool) -> None:
    orphans = version.orphans(manifest)
    commits = version.store.list(join(version.uri, "_commits") + "/")
    unfinished = version.store.head(version.marker_uri) is None
    report["orphans"] += len(orphans)
    report["commit_records"] += len(commits)
    if unfinished:
        report["seals_finished"].append(version.version)
    if not dry_run and (orphans or commits or unfinished):
        version.finish_seal(manifest)
