"""Atomic DeepSpeed checkpoints and `--resume auto`.

DeepSpeed writes a checkpoint as a folder of files, from several ranks; a kill in
the middle leaves a half-written folder.  So every rank writes into
``<dir>/.staging/<tag>``; after a barrier, rank 0 adds the manifest
(``dstrain_complete.json``: size and SHA-256 of every file, see :mod:`dstrain.run.manifest`)
and renames the folder to ``<dir>/<tag>`` (one atomic rename on a POSIX file
system), then atomically rewrites ``<dir>/latest``.  Resume only uses a folder
whose files all match its manifest: a crash loses at most the interval since the
last completed save, and a checkpoint damaged later is skipped (``--resume auto``)
or refused (an explicit folder), naming the file.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from dstrain import distributed as dstdist
from dstrain.errors import ConfigError
from dstrain.run.manifest import (
    MANIFEST,
    CheckpointDamaged,
    read_manifest,
    verify_checkpoint,
    write_manifest,
)

MARKER = MANIFEST  # the manifest is the completion marker
STAGING = ".staging"
TAG_RE = re.compile(r"^step(\d+)$")


def tag_for(step: int) -> str:
    return f"step{step:09d}"


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def check_step_name(folder: Path, manifest: Dict[str, Any]) -> None:
    """A checkpoint is the step its manifest records: a folder named after another step is damage.

    Why: a copy of an older checkpoint renamed to a higher step would otherwise be resumed
    from first, and rotation would keep it while deleting the genuine newer ones.
    """
    m = TAG_RE.match(Path(folder).name)
    if m is None or int(m.group(1)) != manifest.get("step") or manifest.get("tag") != Path(folder).name:
        raise CheckpointDamaged(Path(folder) / MARKER, f"records step {manifest.get('step')} (tag "
                                f"{manifest.get('tag')!r}), but the folder is named {Path(folder).name!r}: "
                                "a renamed or copied checkpoint")


def complete_checkpoints(save_dir: Path) -> List[Tuple[int, Path]]:
    """(step, folder) of every complete checkpoint whose manifest records the step its name says, oldest first.

    Only the manifest is read (not the files hashed): this is what rotation may delete and
    what a run may name; resuming verifies every file again.
    """
    save_dir = Path(save_dir)
    if not save_dir.is_dir():
        return []
    found = []
    for child in save_dir.iterdir():
        m = TAG_RE.match(child.name)
        if m and child.is_dir() and (child / MARKER).is_file():
            try:
                check_step_name(child, read_manifest(child))
            except CheckpointDamaged:
                continue  # never deleted by rotation, never resumed from: --resume auto names it
            found.append((int(m.group(1)), child))
    return sorted(found)


def misplaced_files(save_dir: Path) -> List[Path]:
    """Step-named entries of ``save_dir`` that are not folders (a checkpoint can never be written there)."""
    save_dir = Path(save_dir)
    if not save_dir.is_dir():
        return []
    return sorted(c for c in save_dir.iterdir() if TAG_RE.match(c.name) and not c.is_dir())


def step_folders(save_dir: Path) -> List[Tuple[int, Path]]:
    """(step, folder) of every step-named folder, complete or not, oldest first."""
    save_dir = Path(save_dir)
    if not save_dir.is_dir():
        return []
    return sorted((int(m.group(1)), c) for c in save_dir.iterdir() if (m := TAG_RE.match(c.name)) and c.is_dir())


def save(engine, save_dir: Path, step: int, client_state: Dict[str, Any], keep_last: int = 2,
         layout: Optional[Dict[str, Any]] = None, info: Optional[Dict[str, Any]] = None) -> Path:
    """Write a checkpoint atomically; every rank must call this.

    ``layout`` (world size, ZeRO stage) and ``info`` (the recipe, mask sparsity) go into
    the manifest, so a resume can refuse an incompatible layout or recipe before
    DeepSpeed reads any shard.
    """
    save_dir = Path(save_dir)
    staging = save_dir / STAGING
    tag = tag_for(step)
    final = save_dir / tag

    def prepare() -> None:
        if final.exists() and not final.is_dir():
            raise ConfigError("--output_dir", f"{final} is a file where checkpoint {tag} goes",
                              "move it out of the checkpoints folder")
        shutil.rmtree(staging / tag, ignore_errors=True)
        staging.mkdir(parents=True, exist_ok=True)

    dstdist.on_main_or_raise(lambda: _io(prepare, staging, step, save_dir))
    failure = None
    try:
        engine.save_checkpoint(str(staging), tag=tag, client_state=client_state, save_latest=False)
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as RuntimeError("... iostream error")
        failure = _write_failure(err, staging / tag, step, save_dir)
    failures = [f for f in dstdist.all_gather_objects(failure) if f is not None]
    if failures:
        if dstdist.is_main():
            shutil.rmtree(staging / tag, ignore_errors=True)
        raise ConfigError(*failures[0])

    def publish() -> None:
        write_manifest(staging / tag, {"step": step, "tag": tag, **(layout or {}), **(info or {})})
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging / tag, final)
        _atomic_write_text(save_dir / "latest", tag)
        for _, old in complete_checkpoints(save_dir)[:-keep_last] if keep_last > 0 else []:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)

    dstdist.on_main_or_raise(lambda: _io(publish, staging / tag, step, save_dir))
    return final


def _write_failure(err: BaseException, path: Path, step: int, save_dir: Path) -> Tuple[str, str, str]:
    """(field, problem, fix) of a failed checkpoint write: what failed, the likely cause, what was kept."""
    try:
        free = shutil.disk_usage(save_dir).free
        space = f"{free / 2**20:.0f} MiB free on that disk"
        if free < 64 * 2**20:
            space = f"the disk is full ({space})"
    except OSError:
        space = "free space unknown"
    cause = getattr(err, "strerror", None) or str(err).splitlines()[0][:200]
    kept = complete_checkpoints(save_dir)
    kept_text = f"the newest complete checkpoint, {kept[-1][1].name}, is intact" if kept else "no checkpoint was kept"
    return ("--output_dir", f"cannot write checkpoint step {step} to {path} ({cause}; {space}); {kept_text}",
            "free space or fix the folder's permissions, then continue with --resume auto")


def _io(fn: Callable[[], None], path: Path, step: int, save_dir: Path) -> None:
    """Run rank 0's file work for a checkpoint; an OSError becomes one line naming the path and the cause."""
    try:
        fn()
    except OSError as err:
        raise ConfigError(*_write_failure(err, path, step, save_dir)) from None


def _select(resume: str, save_dir: Path, log: Callable[[str], None]) -> Optional[Path]:
    if resume == "auto":
        found = step_folders(save_dir)
        for _, folder in reversed(found):
            try:
                check_step_name(folder, verify_checkpoint(folder))
                return folder
            except CheckpointDamaged as err:
                log(f"skipping checkpoint {folder.name}: {err.file}: {err.reason}")
        if found:
            raise ConfigError("--resume auto", f"none of the {len(found)} checkpoint(s) under {save_dir} verifies "
                              "(reasons above)", "start over with --overwrite, or restore the checkpoints")
        return None
    path = Path(resume)
    if not path.is_dir():
        raise ConfigError("--resume", f"{path} is not a folder",
                          "pass a step folder under the output's checkpoints/, or --resume auto")
    check_step_name(path, verify_checkpoint(path))
    return path


def resolve_resume(resume: Optional[str], save_dir: Path, log: Callable[[str], None] = print) -> Optional[Path]:
    """`auto` -> newest checkpoint under save_dir that verifies (or None); a path -> that checkpoint, verified.

    Rank 0 reads and hashes the files; every rank gets its answer (or its error), so
    all ranks resume from the same folder and none waits on a rank that failed.
    """
    if not resume:
        return None
    outcome: Any = None
    if dstdist.is_main():
        try:
            outcome = _select(resume, save_dir, log)
        except ConfigError as err:
            outcome = ("error", err.field, err.problem, err.fix)  # plain tuple: pickles across ranks
    outcome = dstdist.all_gather_objects(outcome)[0]
    if isinstance(outcome, tuple):
        raise ConfigError(*outcome[1:])
    return outcome


def check_layout(checkpoint: Path, current: Dict[str, Any]) -> None:
    """What the optimizer state was written for: ZeRO-1/2 shard it by rank (a different world size
    cannot load it), and mixed precision keeps fp32 masters and a loss scaler that an fp32 run has not."""
    saved = json.loads((checkpoint / MARKER).read_text())  # verified by resolve_resume
    if "precision" in saved and "precision" in current and saved["precision"] != current["precision"]:
        raise ConfigError("ds_config", f"checkpoint {checkpoint.name} was written with {saved['precision']} "
                          f"training, this run uses {current['precision']}",
                          f"resume with the ds_config it was written with ({saved['precision']})")
    stage = saved.get("zero_stage", 0)
    if stage != current["zero_stage"]:
        raise ConfigError("ds_config.zero_optimization.stage",
                          f"checkpoint {checkpoint.name} was written with ZeRO stage {stage}, this run uses "
                          f"{current['zero_stage']}", f"resume with stage {stage}")
    if stage > 0 and saved.get("world_size", current["world_size"]) != current["world_size"]:
        raise ConfigError("--resume", f"checkpoint {checkpoint.name} holds ZeRO-{stage} optimizer shards for "
                          f"{saved['world_size']} processes; this run has {current['world_size']}",
                          f"resume with {saved['world_size']} processes, or convert it with DeepSpeed's "
                          "ds_to_universal.py and set \"checkpoint\": {\"load_universal\": true}")


def load(engine, checkpoint: Path) -> Dict[str, Any]:
    """Load model, optimizer, recipe-scheduler (masks, step) state; returns the client state."""
    load_path, client_state = engine.load_checkpoint(
        str(checkpoint.parent), tag=checkpoint.name, load_optimizer_states=True,
        load_lr_scheduler_states=True)
    if load_path is None:
        raise ConfigError("--resume", f"DeepSpeed could not load {checkpoint}",
                          "check that it was written by this model and ds_config (ZeRO stage, world size)")
    return client_state or {}


class CheckpointStore:
    """The checkpoints of one run folder: written atomically, verified before use, rotated, loaded.

    Why a class: the trainer saves, resumes and rotates through one object that knows the
    folder, how many to keep and where to report; the module functions stay usable alone
    (``dstrain export`` reads checkpoints without a trainer).
    """

    def __init__(self, folder: Path, keep_last: int = 2, log: Callable[[str], None] = print) -> None:
        self.folder = Path(folder)
        self.keep_last = keep_last
        self.log = log

    def save(self, engine, step: int, client_state: Dict[str, Any], layout: Dict[str, Any],
             info: Dict[str, Any]) -> Path:
        return save(engine, self.folder, step, client_state, self.keep_last, layout, info)

    def resolve(self, resume: Optional[str]) -> Optional[Path]:
        """The checkpoint to resume from (None for a fresh run), after checking the folder can take new ones."""
        dstdist.on_main_or_raise(self._check_folder)
        return resolve_resume(resume, self.folder, self.log)

    def _check_folder(self) -> None:
        misplaced = misplaced_files(self.folder)
        if misplaced:
            raise ConfigError("--output_dir", f"{misplaced[0]} is a file where a checkpoint folder goes "
                              "(a checkpoint of that step could never be written)", "move it out of the checkpoints folder")

    def complete(self) -> List[Tuple[int, Path]]:
        return complete_checkpoints(self.folder)

    check_layout = staticmethod(check_layout)
    load = staticmethod(load)
