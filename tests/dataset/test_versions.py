"""A version id changes when anything that shapes the content changes: inputs, config, the
files the config points to, the code. Expectations are computed, never hard-coded (other
people edit pipeline/ all the time, which changes the code fingerprint)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pipeline
from pipeline.dataset import DatasetVersion, ShardWriter, make_version_id
from pipeline.fingerprint import CodeMismatch, code_fingerprint, referenced_files
from pipeline.schema import DOCUMENT_SCHEMA
from pipeline.storage import join
from tests.dataset.workloads import unit_docs


def fingerprint_of(package_root: Path) -> str:
    """The code fingerprint a process importing `pipeline` from `package_root` computes."""
    out = subprocess.run(
        [sys.executable, "-c", "from pipeline.fingerprint import code_fingerprint; print(code_fingerprint())"],
        env={"PYTHONPATH": str(package_root), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=120, cwd=package_root,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_a_code_change_changes_the_fingerprint(tmp_path):
    """Two copies of the package made at the same moment; one gets a one-character edit to
    a filter. (Copies: other helpers edit the working tree while tests run.)"""
    source = Path(pipeline.__file__).resolve().parent
    same, edited = tmp_path / "same", tmp_path / "edited"
    for root in (same, edited):
        shutil.copytree(source, root / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    gopher = edited / "pipeline" / "steps" / "gopher.py"
    gopher.write_text(gopher.read_text() + "\n# a changed filter\n")
    assert fingerprint_of(same) != fingerprint_of(edited)
    assert fingerprint_of(same) == fingerprint_of(same), "an unchanged tree gives the same fingerprint"


def test_referenced_files_cover_blocklists_models_and_training_data(tmp_path, monkeypatch):
    words = tmp_path / "words.txt"
    words.write_text("spam\n")
    config = {"order": ["blocklist", "toxicity", "langid"], "blocklist": {"enabled": True, "words_file": str(words)},
              "toxicity": {"enabled": True, "model": "default", "data": None}, "langid": {"enabled": True, "model": None}}  # fmt: skip
    shared = tmp_path / "shared"
    (shared / "models").mkdir(parents=True)
    (shared / "toxicity").mkdir()
    (shared / "models" / "lid.176.ftz").write_bytes(b"model one")
    (shared / "toxicity" / "jigsaw_wiki_comments.jsonl.gz").write_bytes(b"data one")
    monkeypatch.setenv("TOKENMILL_SHARED", str(shared))
    first = referenced_files(config)
    assert set(first) == {"blocklist.words_file", "langid.model", "toxicity.data"}
    assert referenced_files(config) == first, "unchanged files, same hashes"
    changes = [
        lambda: words.write_text("spam\neggs\n"),
        lambda: (shared / "models" / "lid.176.ftz").write_bytes(b"model two"),
        lambda: (shared / "toxicity" / "jigsaw_wiki_comments.jsonl.gz").write_bytes(b"data two"),
    ]
    seen = [first]
    for change in changes:
        change()
        now = referenced_files(config)
        assert now not in seen, "each changed file changes the hashes"
        seen.append(now)
    assert "langid.model" not in referenced_files({**config, "order": ["blocklist"]}), "a step not in the order reads nothing"


def test_each_kind_of_change_gives_a_new_version(refresh_inputs, tmp_path, store, bucket):
    dataset = join(bucket, "ds")
    words = tmp_path / "blocked.txt"
    words.write_text("casino\n")
    filters = {"order": ["gopher_quality", "blocklist"], "blocklist": {"enabled": True, "words_file": str(words)}}
    base = refresh_inputs.plan(dataset, filters=filters)
    assert base.code == code_fingerprint() and base.files == {"blocklist.words_file": referenced_files(base.filter_config)["blocklist.words_file"]}
    assert refresh_inputs.plan(dataset, filters=filters).version == base.version, "an unchanged re-plan gives the same id"
    assert base.version == make_version_id([(s.uri, s.etag, s.size) for s in base.sources], base.config, base.code)

    seen = {base.version}
    words.write_text("casino\npoker\n")
    seen.add(refresh_inputs.plan(dataset, filters=filters).version)
    seen.add(refresh_inputs.plan(dataset, filters={**filters, "gopher_quality": {"min_words": 60}}).version)
    seen.add(refresh_inputs.plan(dataset, sources=refresh_inputs.sources[:-1], filters=filters).version)
    extra = join(bucket, "raw", "extra.jsonl")
    seen.add(refresh_inputs.plan(dataset, sources=[*refresh_inputs.sources, store.put_bytes(extra, b'{"id": "x", "text": "one"}\n')], filters=filters).version)
    seen.add(refresh_inputs.plan(dataset, sources=[*refresh_inputs.sources, store.put_bytes(extra, b'{"id": "x", "text": "two"}\n')], filters=filters).version)
    assert len(seen) == 6, "blocklist content, config, the set of inputs and an input's content each give a new version"


def test_a_worker_on_other_code_refuses_before_writing(store, bucket):
    version = DatasetVersion(join(bucket, "ds"), "v1", store, code="0" * 16)
    with pytest.raises(CodeMismatch, match="planned with code 0000"):
        ShardWriter(version, "u", schema=DOCUMENT_SCHEMA)
    with pytest.raises(CodeMismatch):
        version.commit_unit("u", [])
    assert store.list(version.uri + "/") == []
    same = DatasetVersion(join(bucket, "ds"), "v1", store, code=code_fingerprint())
    with ShardWriter(same, "u", schema=DOCUMENT_SCHEMA) as writer:
        writer.write(unit_docs(0))
        assert writer.commit()["code"] == code_fingerprint()
