"""Kill the writer at every write of the commit and seal paths in turn; a re-run must converge
on the same listed version, and what a reader globs must equal what the manifest lists."""

from __future__ import annotations

import pickle
from concurrent.futures import ThreadPoolExecutor

import pyarrow.parquet as pq
import pytest

from pipeline.dataset import DatasetVersion, latest_version, read_parquet, sealed_versions
from pipeline.storage import join
from tests.dataset import crashpoints, workloads

pytestmark = pytest.mark.slow


def globbed_ids(store, version: DatasetVersion) -> list[str]:
    """What a reader that ignores the manifest sees: every `data/*.parquet` of the version."""
    ids = []
    for obj in store.list(join(version.uri, "data") + "/"):
        assert obj.uri.endswith(".parquet")
        ids += read_parquet(store, obj.uri, columns=["id"]).column("id").to_pylist()
    return sorted(ids)


def assert_converged(store, version: DatasetVersion, expected_ids: list[str]) -> None:
    manifest = version.manifest()
    assert manifest.sealed
    assert [v["version"] for v in sealed_versions(version.dataset_uri, store)] == [version.version]
    assert latest_version(version.dataset_uri, store).version == version.version
    assert sorted(version.read_table(columns=["id"]).column("id").to_pylist()) == expected_ids
    assert globbed_ids(store, version) == expected_ids, "globbing data/*.parquet gives exactly the manifest's rows"
    assert version.verify() == []
    assert store.list(join(version.uri, "_commits") + "/") == [], "commit records are compacted away"
    for uri in version.quarantine_uris():
        assert pq.read_metadata(store.arrow_filesystem(uri)[1], filesystem=store.arrow_filesystem(uri)[0]).num_rows == 1


def test_every_crash_point_of_commit_and_seal_converges(store, bucket, s3_settings):
    env = s3_settings.as_env()
    args = ["tests.dataset.workloads", "commit_and_seal"]
    writes = crashpoints.count_writes(*args, [join(bucket, "counted"), "0a0a0a0a"], env)
    expected = sorted(workloads.unit_docs(i).column("id").to_pylist()[j] for i in range(workloads.UNITS) for j in range(workloads.ROWS_PER_UNIT))
    assert writes >= 3 * workloads.UNITS + 5, "data shards, quarantine, commit records, manifest, orphans, marker, pointer, cleanup"
    print(f"\ncommit+seal crash points: {writes}")
    for n in range(1, writes + 1):
        dataset = join(bucket, f"crash-{n:03d}")
        code, report = crashpoints.run(n, *args, [dataset, "0a0a0a0a"], env)
        assert code == -9, f"crash point {n}: {report[-2000:]}"
        workloads.commit_and_seal([dataset, "0a0a0a0a"])  # the re-run
        assert_converged(store, DatasetVersion(dataset, "0a0a0a0a", store), expected)


def snapshot(store, prefix: str) -> dict[str, bytes]:
    return {o.uri: store.get_bytes(o.uri) for o in store.list(prefix + "/")}


def restore(store, prefix: str, objects: dict[str, bytes]) -> None:
    """The prefix exactly as snapshotted (same keys, same bytes, hence the same ETags)."""
    store.delete_prefix(prefix + "/")
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda item: store.put_bytes(*item), objects.items()))


def test_every_crash_point_of_a_refresh_seal_converges(store, bucket, s3_settings, refresh_inputs, tmp_path):
    """The refresh's seal and post-seal path (quarantine copies, manifest, orphans, marker,
    pointer, stage collection). The stages run once; before each crash point the dataset is
    put back to exactly its staged state (cheaper than staging again, and the same state)."""
    from pipeline import refresh

    env = s3_settings.as_env()
    args = ["tests.dataset.workloads", "refresh_seal"]
    sources = [s for s in refresh_inputs.sources if s.uri.endswith(("web-0.jsonl.gz", "broken.jsonl"))]
    plan = refresh_inputs.plan(join(bucket, "refresh-crash"), sources=sources)
    filter_results, dedup_counts = refresh_inputs.run_stages(plan)
    path = tmp_path / "staged.pickle"
    path.write_bytes(pickle.dumps((plan, filter_results, dedup_counts)))
    staged = snapshot(store, plan.dataset_uri)

    writes = crashpoints.count_writes(*args, [str(path)], env)
    expected = sorted(plan.final.read_table(columns=["id"]).column("id").to_pylist())
    assert expected and writes >= 8
    print(f"\nrefresh seal crash points: {writes}")
    for n in range(1, writes + 1):
        restore(store, plan.dataset_uri, staged)
        code, report = crashpoints.run(n, *args, [str(path)], env)
        assert code == -9, f"crash point {n}: {report[-2000:]}"
        refresh.run_refresh(plan)  # the re-run: whatever is left of stages and seal
        assert_converged(store, plan.final, expected)
        assert store.list(join(plan.dataset_uri, "_stages", "dedup") + "/") == []
        assert store.list(join(plan.dataset_uri, "_stages", "filtered") + "/") == []
        assert plan.final.quarantine_uris(), "the sources' quarantine is kept with the version"
