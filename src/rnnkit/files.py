"""Writing files so that a crash or a bad input never leaves half a file behind.

One mechanism in three shapes: write into a temporary file or directory beside the target (the
same filesystem, so that a rename is atomic), fsync it, then rename it into place; a reader sees
the old version or the new one, never a part, and an error deletes the temporary and leaves the
old version as it was.

- :func:`atomic_write_bytes`: one file (results, plots, CSVs, caches);
- :func:`atomic_write_files`: several files into one directory, each whole (training checkpoints);
- :func:`atomic_directory`: a whole directory built aside and swapped in (model bundles).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Union

if TYPE_CHECKING:  # pandas loads only when a frame is written: `import rnnkit` stays light
    import pandas as pd


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are for everyone, as open() makes them
        _write_synced(Path(tmp), data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _sync_directory(path.parent)
    return path


def atomic_write_files(directory: Path, files: dict[str, bytes], tmp_prefix: str = ".tmp-") -> None:
    """Write ``files`` (name -> bytes) into the existing ``directory`` so that each appears whole or not at all.

    All are written and fsynced in a temporary directory (``tmp_prefix`` + random) beside their
    final place first, then renamed over the old versions in the order given: a crash between
    two renames leaves some files new and some old, each whole, so order them so that such a mix
    is harmless (a checkpoint goes first, and carries its own position). A process killed while
    writing leaves the temporary directory behind: the caller sweeps ``tmp_prefix*`` away.
    """
    tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix, dir=directory))
    try:
        for name, data in files.items():
            _write_synced(tmp / name, data)
        for name in files:
            os.replace(tmp / name, directory / name)
        _sync_directory(directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Build a directory that replaces ``target`` whole: ``with atomic_directory(path) as tmp:`` write into ``tmp``.

    ``tmp`` is a new empty directory beside ``target``. On a clean exit its files are fsynced and
    it is renamed to ``target`` (an old ``target`` is removed after); on an error it is deleted
    and ``target`` stays as it was. The caller decides whether ``target`` may be replaced.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        for file in tmp.rglob("*"):  # on disk before a rename can make them visible
            if file.is_file():
                with open(file, "rb") as f:
                    os.fsync(f.fileno())
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _sync_directory(target.parent)


def write_csv(frame: pd.DataFrame, path: Union[str, Path]) -> Path:
    """A frame as CSV (no index), written atomically."""
    return atomic_write_bytes(path, frame.to_csv(index=False).encode())


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _sync_directory(directory: Path) -> None:
    """Make the renames in ``directory`` durable; Windows cannot open a directory, and need not."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _swap_into_place(tmp: Path, target: Path) -> None:
    if not os.path.lexists(target):
        os.rename(tmp, target)  # atomic: the directory appears whole or not at all
        return
    # Two renames: for an instant the target is absent, the old version whole under `old`.
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
