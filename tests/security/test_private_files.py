"""Files holding secrets are private from their first byte, and the embedded S3 server keeps
its data, keys and logs in folders only its owner can enter."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from pipeline import private_files
from pipeline.private_files import private_dir, write_private
from pipeline.s3server import start_s3_server


@pytest.fixture()
def open_umask():
    """The most permissive umask: whatever mode a file gets is the mode the code asked for."""
    previous = os.umask(0)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_secret_file_is_private_before_its_content_is_written(tmp_path, open_umask, monkeypatch):
    """At the moment the data reaches the disk the file is already 0600: not chmod-ed after."""
    seen = []
    real_fsync = os.fsync

    def checking_fsync(fd):
        seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(private_files.os, "fsync", checking_fsync)
    target = write_private(tmp_path / "credentials.json", '{"secret_key": "x"}')
    assert seen == [0o600]
    assert mode(target) == 0o600 and target.read_text() == '{"secret_key": "x"}'
    assert [p.name for p in tmp_path.iterdir()] == ["credentials.json"], "no staging file left behind"


def test_a_symlink_planted_at_the_target_is_replaced_not_followed(tmp_path, open_umask):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("untouched")
    (tmp_path / "env.sh").symlink_to(elsewhere)
    write_private(tmp_path / "env.sh", "export AWS_SECRET_ACCESS_KEY='x'\n")
    assert elsewhere.read_text() == "untouched"
    assert not (tmp_path / "env.sh").is_symlink() and mode(tmp_path / "env.sh") == 0o600


def test_private_dir_tightens_an_existing_folder(tmp_path, open_umask):
    folder = tmp_path / "state"
    folder.mkdir(mode=0o755)
    assert mode(private_dir(folder)) == 0o700
    assert mode(private_dir(tmp_path / "new" / "deeper")) == 0o700


def test_embedded_s3_server_keeps_data_and_keys_private(tmp_path, open_umask):
    """Also a root left by an older version (world-readable folder and credentials) is
    tightened, and its keys kept."""
    root = tmp_path / "s3"
    root.mkdir(mode=0o755)
    (root / "credentials.json").write_text(json.dumps({"access_key": "tmold", "secret_key": "0123456789abcdef0123"}))
    (root / "credentials.json").chmod(0o644)
    server = start_s3_server(root)
    try:
        assert server.settings.access_key == "tmold"
        for folder in (root, root / "data", root / "logs", root / "tmp"):
            assert mode(folder) == 0o700, folder
        for secret in (root / "credentials.json", root / "s3.json"):
            assert mode(secret) == 0o600, secret
        assert "0123456789abcdef0123" in (root / "s3.json").read_text()
    finally:
        server.stop()
