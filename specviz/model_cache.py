"""A checked on-disk cache of converted models (e.g. a GGUF de-quantized to safetensors).

A cache entry is a folder holding the files a `from_pretrained` needs plus `specviz-cache.json`,
a manifest with each file's size and sha256. An entry is built in a temporary folder beside its
final place and renamed into place only once complete, so a crash mid-write leaves a temporary
folder (ignored and later removed), never a half-written entry. Loading re-checks the manifest
(about 0.3 s per 500 MB), so a truncated or altered file is detected and the entry rebuilt,
never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

MANIFEST = "specviz-cache.json"
MANIFEST_VERSION = 1
STALE_TMP_SECONDS = 3600  # temporary folders older than this were left by a crashed build


def cache_root() -> Path:
    """`SPECVIZ_CACHE_DIR`, else `$XDG_CACHE_HOME/specviz`, else `~/.cache/specviz`."""
    explicit = os.environ.get("SPECVIZ_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "specviz"


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheCheck:
    ok: bool
    reason: str = ""


def check_entry(folder: Path, source_key: str) -> CacheCheck:
    """Whether `folder` is a complete, unaltered entry built from the source named `source_key`."""
    manifest_path = folder / MANIFEST
    if not folder.is_dir():
        return CacheCheck(False, "not built yet")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return CacheCheck(False, f"{MANIFEST} is missing or unreadable")
    if manifest.get("version") != MANIFEST_VERSION or manifest.get("source") != source_key:
        return CacheCheck(False, "built from another source or by another specviz version")
    for name, expected in files.items():
        path = folder / name
        try:
            size = path.stat().st_size
        except OSError:
            return CacheCheck(False, f"{name} is missing")
        if size != expected.get("size"):
            return CacheCheck(False, f"{name} has {size} bytes, expected {expected.get('size')}")
        if file_sha256(path) != expected.get("sha256"):
            return CacheCheck(False, f"{name} does not match its checksum")
    return CacheCheck(True)


def write_manifest(folder: Path, source_key: str) -> None:
    files = {p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = {"version": MANIFEST_VERSION, "source": source_key, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                time.gmtime()), "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")


def _remove_stale_builds(parent: Path, stem: str) -> None:
    for tmp in parent.glob(f".{stem}.building-*"):
        try:
            if time.time() - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def _make_readable(folder: Path) -> None:
    """mkdtemp (and some writers) create owner-only files; a cache entry is ordinary data."""
    os.chmod(folder, 0o755)
    for path in folder.iterdir():
        if path.is_file():
            os.chmod(path, 0o644)


def build_entry(folder: Path, source_key: str, write: Callable[[Path], None]) -> None:
    """Run `write(tmp_folder)`, add the manifest, and move the result to `folder` atomically.
    Raises OSError when the cache cannot be written (the caller falls back to no caching)."""
    parent = folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(parent, folder.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.building-", dir=parent))
    try:
        write(tmp)
        write_manifest(tmp, source_key)
        _make_readable(tmp)
        if folder.exists():  # an invalid entry (checked by the caller): replace it
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
