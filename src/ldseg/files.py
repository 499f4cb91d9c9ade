"""Writing files so that a crash or an error never leaves a half-written one behind."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ldseg.errors import LdsegError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_write(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is fsynced and renamed onto `path`.

    `suffix` keeps the format's ending on the temporary name for writers that pick the format
    from it (SimpleITK, matplotlib). The file gets ordinary permissions, not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_output_folder(path: str | Path) -> None:
    """Fail before any work when `path` cannot become a folder we can write into.

    Tries a nameless temporary file in the folder (or in its nearest existing parent), which
    also catches read-only mounts and permissions that `os.access` misjudges (e.g. for root).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LdsegError(f"{path}: exists and is not a folder")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise LdsegError(f"{path}: cannot create the output folder ({existing} is a file)")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise LdsegError(f"{path}: output folder is not writable ({exc.strerror}: "
                         f"{existing})") from None
