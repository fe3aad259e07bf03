"""Files that hold secrets (credentials, server configs with keys, env files) and the folders
they live in, created private from the first byte.

A file written with default permissions and chmod-ed afterwards is readable by every local
user in between (and stays so if the process dies before the chmod). Here a new file is
opened with O_CREAT|O_EXCL and mode 0600, so it never exists with wider permissions, whatever
the umask; it is written under a fresh name and renamed over the target, so a reader never
sees half a file and a symlink planted at the target is replaced, never followed.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: str | Path) -> Path:
    """`path` (and missing parents) as a folder only its owner can enter: 0700, also when it
    already existed with wider permissions."""
    path = Path(path)
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != DIR_MODE:
        path.chmod(DIR_MODE)
    return path


def write_private(path: str | Path, data: str | bytes) -> Path:
    """Replace `path` atomically with `data`, the file readable and writable by its owner only."""
    path = Path(path)
    staging = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    return path
