"""File helpers: atomic writes so that a failed job never leaves a half-written output."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    Args:
        path: Final file (or folder, with ``is_dir``) path. Parent folders are created.
        is_dir: Create and yield a temporary folder instead of a file path.

    Yields:
        A temporary path in the same folder (same file system, so the final rename is atomic). The
        suffix of ``path`` is kept so that drivers that look at extensions (GDAL, pyarrow) still work.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=".tmp" + final.suffix, dir=final.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, (0o777 if is_dir else 0o666) & ~umask)
        if is_dir and final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


class NotWritableError(PermissionError):
    """An output folder (``results/``, ``logs/``, ``benchmarks/``) that cannot be written."""


def check_writable(folders: Iterable[str | Path]) -> None:
    """Fail before any job if an output folder, or a folder directly below it, cannot be written.

    Each existing folder is tried by creating (and removing) a temporary file, the only test that also
    holds for read-only mounts and for root without ``CAP_DAC_OVERRIDE``. Missing folders are fine
    (Snakemake creates them) as long as their parent is writable.

    Raises:
        NotWritableError: Naming every folder that cannot be written and the reason.

    """
    bad: list[str] = []
    for folder in folders:
        root = Path(folder)
        probe = root if root.is_dir() else root.parent
        subdirs = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        for path in [probe, *subdirs]:
            try:
                with tempfile.TemporaryFile(dir=path):
                    pass
            except OSError as exc:
                bad.append(f"{path}/ ({exc.strerror or exc})")
    if bad:
        raise NotWritableError(
            "cannot write to " + ", ".join(bad) + ": geoens writes every output, log and benchmark there. "
            "Make the folder writable (chmod -R u+w results logs benchmarks) or run the workflow from a "
            "writable copy; nothing was run"
        )


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_json(path: str | Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


# Fingerprints of input folders, per process: key = (folder, its inode and mtime), so a folder that is
# (re)created during a run (the demo world, before the jobs that read it) is walked again.
_FINGERPRINTS: dict[tuple[str, int, int], str] = {}


def folder_fingerprint(path: str | Path) -> str:
    """A short text that changes when any file below ``path`` is added, removed, renamed or rewritten.

    The fingerprint hashes (BLAKE2b) the sorted relative path, size and modification time (ns) of every
    file below the folder (hidden files and folders, ``.*``, skipped, as the image and shard readers skip
    them); contents are not read, so it costs one ``stat`` per file (measured in
    ``bench/bench_fingerprint.py``). It is cached per process as long as the folder itself keeps its
    inode and mtime. A file rewritten with the same size and mtime (``cp -p`` of a same-size file) is not
    seen: touch it.

    Args:
        path: The folder.

    Returns:
        ``"<n> files, <bytes> bytes, <hash>"``, or ``"missing"`` when the folder does not exist (yet).

    """
    root = Path(path)
    try:
        st = root.stat()
    except FileNotFoundError:
        return "missing"
    key = (str(root.resolve()), st.st_ino, st.st_mtime_ns)
    cached = _FINGERPRINTS.get(key)
    if cached is not None:
        return cached
    digest = hashlib.blake2b(digest_size=16)
    n_files = n_bytes = 0
    stack = [""]  # relative folders still to list (POSIX separators)
    while stack:
        rel = stack.pop()
        with os.scandir(root / rel if rel else root) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        subdirs = []
        for entry in entries:
            name = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_dir():
                subdirs.append(name)
                continue
            est = entry.stat()
            digest.update(f"{name}\0{est.st_size}\0{est.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
            n_files += 1
            n_bytes += est.st_size
        stack.extend(reversed(subdirs))  # depth first, in name order
    value = f"{n_files} files, {n_bytes} bytes, {digest.hexdigest()}"
    _FINGERPRINTS[key] = value
    return value
