"""Run folders: where a run's results live, and which process may write them.

A run folder is ``run.output_dir/run.name``; ``run.name`` is one plain path
component, so no name reaches outside ``output_dir``. One process at a time owns
a folder: it holds an exclusive ``flock`` on ``<folder>/.lock`` for the whole run
(the OS drops it when the process dies, even by SIGKILL), so a second run of the
same name, or a ``--resume`` of a run still going, stops with one line instead of
interleaving its files with the first one's; ``--overwrite`` of a run still going is
refused before any work (:func:`check_not_live`). Replacing an existing folder
(``--overwrite``) only ever deletes a fedvl run (a folder with ``status.json``),
and only once the new run's config and data have been validated.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from fedvl.io import atomic_write
from fedvl.schema import ConfigError

STATUS = "status.json"
"""A run folder's state (running, complete, failed, interrupted) and why; read and written by this
module alone, so every command agrees on what a damaged or missing one means."""


def write_status(run_dir: Path, state: str, **extra: Any) -> None:
    text = json.dumps({"state": state, **extra}, indent=2, default=float)
    atomic_write(Path(run_dir) / STATUS, lambda tmp: Path(tmp).write_text(text))


def read_status(run_dir: Path) -> dict[str, Any] | None:
    """The run's status record; None when the folder has none; ``{"state": "damaged"}`` when it is not
    a readable JSON object (a user's edit, a copy cut short): a state no run writes, so no caller
    mistakes it for a finished or a live run."""
    try:
        record = json.loads((Path(run_dir) / STATUS).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"state": "damaged"}
    return record if isinstance(record, dict) else {"state": "damaged"}


def has_status(run_dir: Path) -> bool:
    """Whether the folder is a fedvl run's (every run writes its status before anything else)."""
    return (Path(run_dir) / STATUS).is_file()

LOCK_NAME = ".lock"
MIN_FREE_BYTES = 16 << 20
"""Less free space than this where the results go: the run would fail at its first checkpoint."""


class RunFolderError(ConfigError):
    """The results folder cannot be used (taken, not a run, not writable): one line, exit 2."""


def check_name(name: str, what: str = "run.name") -> None:
    """``run.name`` names one folder under ``run.output_dir``, nothing else (empty: a timestamped name)."""
    if not name:
        return
    seps = {os.sep, "/", "\\"} | ({os.altsep} if os.altsep else set())
    if name in (".", "..") or any(s in name for s in seps) or "\0" in name:
        raise ConfigError(f"{what}={name!r} must be one plain folder name (no '/', '.', '..' or absolute "
                          "path): it names a folder under run.output_dir")


def check_writable(folder: str | Path, what: str) -> None:
    """Before anything is written: ``folder`` is, or can become, a writable folder with room to spare."""
    p = Path(folder).absolute()
    existing = next(q for q in (p, *p.parents) if q.exists() or q == q.parent)
    if not existing.is_dir():
        raise RunFolderError(f"{what}={folder}: {existing} is a file, not a folder")
    try:  # root passes os.access everywhere; a read-only mount or an immutable folder shows only on a write
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".fedvl-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise RunFolderError(f"{what}={folder}: cannot write in {existing} ({e.strerror or e})") from None
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        raise RunFolderError(f"{what}={folder}: the disk holding {existing} is full ({free / 2**20:.1f} MiB free)")


def _entries(path: Path) -> list[Path]:
    return [c for c in path.iterdir() if c.name != LOCK_NAME] if path.is_dir() else []


def check_free(path: Path, overwrite: bool) -> None:
    """Whether a new run may take ``path`` (before any work: a fast, lock-free first look)."""
    if path.is_symlink():
        raise RunFolderError(f"results folder {path} is a symbolic link; choose another run.name")
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"results folder {path} is a file; choose another run.name")
    if not _entries(path):
        return
    if not overwrite:
        raise RunFolderError(f"results folder {path} already exists; choose another run.name or pass --overwrite")
    if not has_status(path):
        raise RunFolderError(f"{path} is not a fedvl run folder (no status.json); --overwrite deletes only fedvl "
                             "runs: choose another run.name")


def _in_use(path: Path, fd: int) -> RunFolderError:
    holder = os.pread(fd, 32, 0).decode(errors="replace").strip()  # the pid its owner wrote
    return RunFolderError(f"results folder {path} is in use by another fedvl process"
                          f"{f' (pid {holder})' if holder.isdigit() else ''}; wait for it to end or "
                          "choose another run.name")


def check_not_live(path: Path) -> None:
    """Refuse a folder whose run is still going (its lock held), before any work: a non-blocking
    look that holds a shared lock for an instant and writes nothing, so ``--overwrite`` of a live
    run stops at once instead of after building its data."""
    try:
        fd = os.open(path / LOCK_NAME, os.O_RDONLY)
    except OSError:  # no lock file: no run ever held this folder
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            raise _in_use(path, fd) from None
    finally:
        os.close(fd)  # and with it the shared lock


def wait_until_free(path: Path, wait_s: float, log=print) -> None:
    """Wait up to ``wait_s`` for a folder's run to end (its lock released), then refuse as
    :func:`check_not_live`. For ``fedvl serve --resume`` right after a server died: its SuperLink
    stops the dead run's ServerApp process, which holds the folder, only a moment later."""
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        try:
            return check_not_live(path)
        except RunFolderError as e:
            if time.monotonic() >= deadline:
                raise
            if not said:
                log(f"fedvl: waiting up to {wait_s:.0f}s for the previous process to release {path} ({e})")
                said = True
            time.sleep(0.2)


LOOK_S = 1.0
"""How long a refused exclusive lock is tried again: a look (:func:`check_not_live`, another run starting
at the same moment) holds a shared lock for an instant, a live run holds its lock for the whole run."""


def _lock_exclusive(fd: int) -> None:
    deadline = time.monotonic() + LOOK_S
    while True:
        try:
            return fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
                raise
        time.sleep(0.02)


class RunFolder:
    """One process's exclusive claim on a run folder, from :meth:`acquire` to :meth:`release`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None
        self._created = False

    def acquire(self, fresh: bool, overwrite: bool = False) -> RunFolder:
        """Lock the folder; ``fresh``: create it, or empty it when ``overwrite`` and it is a fedvl run."""
        p = self.path
        if fresh:
            check_free(p, overwrite)
            self._created = not p.exists()
            try:
                p.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise RunFolderError(f"cannot create results folder {p}: {e.strerror or e}") from None
        elif not p.is_dir() or p.is_symlink():
            raise RunFolderError(f"{p} is not a fedvl results folder")
        try:
            fd = os.open(p / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            self._remove_if_created()
            raise RunFolderError(f"cannot write in results folder {p}: {e.strerror or e}") from None
        try:
            _lock_exclusive(fd)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                error = _in_use(p, fd)
            else:
                error = RunFolderError(f"cannot lock results folder {p}: {e.strerror}")
            os.close(fd)
            raise error from None
        self._fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        if fresh:
            try:
                check_free(p, overwrite)  # again, under the lock: another run may have finished here meanwhile
            except RunFolderError:
                self.release()
                raise
            for child in _entries(p):  # a fedvl run being replaced (checked above)
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        return self

    def _remove_if_created(self) -> None:
        if self._created and not _entries(self.path):
            shutil.rmtree(self.path, ignore_errors=True)

    def release(self, abandon: bool = False) -> None:
        """Drop the lock (the lock file stays: deleting it would let two processes lock two files).
        ``abandon``: the run never started; a folder this process created goes again."""
        if self._fd is None:  # never held: a process that lost the race for a folder both saw missing
            return            # must not delete the winner's folder (and its lock file) from under it
        if abandon:
            self._remove_if_created()
        os.close(self._fd)  # closing the only descriptor releases the flock
        self._fd = None
