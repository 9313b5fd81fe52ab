"""Atomic file writes: write to a temporary file in the target's folder, then `os.replace` it into place.

A reader never sees a half-written file, and a crash leaves the old file (or none) plus at most one
hidden temporary file, which is removed when the writer raises. The temporary file lives in the same
folder as the target because `os.replace` is only atomic within one file system.

Example:
    with atomic_path("out/label.nii.gz") as tmp:
        nibabel.save(image, tmp)          # tmp ends in "label.nii.gz", so nibabel picks gzip
    atomic_write_text("out/metrics.json", json.dumps(metrics))
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import uuid
from typing import Iterator

_TEMP_PREFIX = ".tmp-"


def temporary_sibling(path: str | os.PathLike) -> pathlib.Path:
    """A fresh, unused path in the folder of `path` whose name ends with the name of `path`.

    Keeping the full name as the suffix keeps extensions such as `.nii.gz` that writers look at.
    """
    target = pathlib.Path(path)
    return target.with_name(f"{_TEMP_PREFIX}{uuid.uuid4().hex[:12]}-{target.name}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = True) -> Iterator[pathlib.Path]:
    """Yields a temporary path to write; on normal exit it replaces `path` atomically.

    Args:
        path: final file path. Its folder must exist.
        fsync: flush the written file to disk before the rename, so a crash cannot leave an empty
            file under the final name.

    Yields:
        A path in the same folder that does not exist yet; the caller creates it.

    Raises:
        FileNotFoundError: the folder of `path` does not exist, or the caller wrote nothing.
    """
    target = pathlib.Path(path)
    if not target.parent.is_dir():
        raise FileNotFoundError(f"cannot write {target}: folder {target.parent} does not exist")
    temporary = temporary_sibling(target)
    try:
        yield temporary
        if not temporary.exists():
            raise FileNotFoundError(f"atomic write of {target}: nothing was written to {temporary.name}")
        if fsync:
            with open(temporary, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(temporary, target)
    finally:
        if temporary.exists():
            temporary.unlink()


def remove_stale_temporaries(path: str | os.PathLike) -> list[pathlib.Path]:
    """Removes the temporary siblings of `path` that a killed writer left behind; returns what it removed.

    Only for writers that own `path` exclusively: another process writing `path` at this moment would lose
    its temporary file.
    """
    target = pathlib.Path(path)
    pattern = re.compile(re.escape(_TEMP_PREFIX) + r"[0-9a-f]{12}-" + re.escape(target.name))
    removed = []
    if target.parent.is_dir():
        for sibling in target.parent.iterdir():
            if pattern.fullmatch(sibling.name) and sibling.is_file():
                sibling.unlink(missing_ok=True)
                removed.append(sibling)
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = True) -> pathlib.Path:
    """Writes `data` to `path` atomically and returns the path."""
    with atomic_path(path, fsync=fsync) as temporary:
        temporary.write_bytes(data)
    return pathlib.Path(path)


def atomic_write_text(
    path: str | os.PathLike, text: str, encoding: str = "utf-8", fsync: bool = True
) -> pathlib.Path:
    """Writes `text` to `path` atomically and returns the path."""
    return atomic_write_bytes(path, text.encode(encoding), fsync=fsync)
