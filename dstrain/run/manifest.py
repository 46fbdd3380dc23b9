"""Checkpoint manifests: the size and SHA-256 of every file of a checkpoint.

Why: an atomic rename protects against a crash *during* a save, not against what
happens to the files afterwards (a truncated copy between file systems, a disk
error, a script that rewrites masks).  DeepSpeed and ``torch.load`` then either die
with a traceback deep inside their readers or, worse, load the damaged bytes and
train on.  The manifest is the last file written into a checkpoint (atomically,
by rank 0, after every rank has written its shards); a checkpoint is used only if
every file it lists still has its recorded size and hash, and the manifest itself
carries a hash of its own contents, so an edited or empty manifest is caught too.

The manifest doubles as the completion marker (``dstrain_complete.json``): a folder
without it was never finished.  It also carries the run's layout and recipe, which
:mod:`dstrain.run.resume` compares against the resuming run.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict

from dstrain.errors import ConfigError

MANIFEST = "dstrain_complete.json"
FORMAT = 2  # 1: marker without file hashes (before manifests); refused on resume
_CHUNK = 1 << 20


class CheckpointDamaged(ConfigError):
    """A checkpoint file is missing or differs from the manifest; names the file and why."""

    def __init__(self, file: Path, reason: str) -> None:
        self.file = Path(file)
        self.reason = reason
        super().__init__("--resume", f"{file}: {reason}",
                         "resume from an older checkpoint (--resume auto takes the newest that verifies), "
                         "or start over with --overwrite")


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _self_digest(data: Dict[str, Any]) -> str:
    body = {k: v for k, v in data.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _files(folder: Path) -> Dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MANIFEST and not p.name.startswith(f".{MANIFEST}.")}


def write_manifest(folder: Path, extra: Dict[str, Any]) -> Dict[str, Any]:
    """Hash every file under ``folder`` and write the manifest last, atomically (rank 0 only)."""
    folder = Path(folder)
    files = {rel: {"size": p.stat().st_size, "sha256": file_digest(p)} for rel, p in _files(folder).items()}
    data = {"format": FORMAT, **extra, "files": files}
    data["manifest_sha256"] = _self_digest(data)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{MANIFEST}.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / MANIFEST)
    return data


def read_manifest(folder: Path) -> Dict[str, Any]:
    """The manifest's contents, after checking that it is whole and unedited (not the files)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise CheckpointDamaged(path, "missing (the checkpoint was never completed)")
    raw = path.read_bytes()
    if not raw.strip():
        raise CheckpointDamaged(path, "is empty")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointDamaged(path, f"is not valid JSON ({err.__class__.__name__}: {err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise CheckpointDamaged(path, "has no file list (written before dstrain kept checksums, or edited)")
    if data.get("manifest_sha256") != _self_digest(data):
        raise CheckpointDamaged(path, "its contents were edited (self-checksum mismatch)")
    return data


def verify_checkpoint(folder: Path) -> Dict[str, Any]:
    """Check every file the manifest lists; returns the manifest or raises :class:`CheckpointDamaged`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointDamaged(folder, "is not a folder")
    data = read_manifest(folder)
    for rel, want in sorted(data["files"].items()):
        path = folder / rel
        if not path.is_file():
            raise CheckpointDamaged(path, "is missing")
        size = path.stat().st_size
        if size != want["size"]:
            raise CheckpointDamaged(path, f"has {size} bytes, the manifest says {want['size']} "
                                          f"({'truncated' if size < want['size'] else 'grown'})")
        if file_digest(path) != want["sha256"]:
            raise CheckpointDamaged(path, "contents changed since it was written (SHA-256 mismatch)")
    return data


def rewrite_manifest(folder: Path, **changes: Any) -> None:
    """Change manifest fields and re-sign it (for tools and tests that build checkpoints by hand)."""
    folder = Path(folder)
    data = read_manifest(folder)
    data.update(changes)
    data["manifest_sha256"] = _self_digest(data)
    (folder / MANIFEST).write_text(json.dumps(data, indent=1, sort_keys=True))
