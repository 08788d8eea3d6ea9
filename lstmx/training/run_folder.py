"""The folder of one training run (``lstmx train --out``): checked before any work, locked while in use, and an
earlier run in it replaced only once the new one has written its first checkpoint.

- **Doors.** :func:`check_run_folder` says in one line what is wrong with a path before anything is written:
  a regular file where the folder or one of its parents should be, a folder that cannot be created or written,
  a run file (``last.npz``, ``log.jsonl``, ``loss.png``) that is a folder.
- **One run at a time.** :meth:`RunFolder.lock` holds an operating-system lock (``filelock``) on
  ``.lstmx.lock`` for the whole run; a second run on the folder is refused naming the process that holds it.
  The system drops the lock of a process that dies, so a killed run's folder is taken over by the next one.
- **Nothing lost on --overwrite.** :meth:`RunFolder.set_aside` moves the earlier run's files into
  ``.lstmx-replaced/``; :meth:`RunFolder.settle` deletes them once the new run has written ``last.npz``, or
  puts them back (removing what the new run wrote) when it has not. A run killed before its first checkpoint
  leaves them there, and the next run on the folder puts them back first.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path
from typing import Callable

import filelock

RUN_FILES = ("log.jsonl", "loss.png", "last.npz")  # what a run writes into its folder (besides temporary files)
LOCK_NAME = ".lstmx.lock"
OWNER_NAME = ".lstmx.owner"  # who holds the lock, for the message a second run prints
SET_ASIDE_NAME = ".lstmx-replaced"


class RunFolderError(ValueError):
    """A run folder that cannot be used: its one-line message names the path and what is wrong."""


def is_run_file(name: str) -> bool:
    return name in RUN_FILES or (name.startswith(".") and name.endswith(".tmp"))


def check_run_folder(path: Path, flag: str = "--out") -> None:
    """Raise :class:`RunFolderError` when ``path`` cannot hold a run; creates nothing."""
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            what = "is a file" if parent == path else f"lies under {parent}, which is a file"
            raise RunFolderError(f"{flag} {path} {what}, not a folder")
        if parent.exists():
            if not os.access(parent, os.W_OK | os.X_OK):
                where = "" if parent == path else f" (its parent {parent} is not)"
                raise RunFolderError(f"{flag} {path} is not writable by this user{where}")
            break
    for name in RUN_FILES:
        if (path / name).is_dir():
            raise RunFolderError(f"{flag} {path}: {path / name} is a folder, where the run writes its {name}; "
                                 "move it away")


class RunFolder:
    """One run's folder, locked from :meth:`lock` until :meth:`release`."""

    def __init__(self, path: str | os.PathLike, flag: str = "--out") -> None:
        self.path, self.flag = Path(path), flag
        self._lock: filelock.BaseFileLock | None = None

    @property
    def set_aside_folder(self) -> Path:
        return self.path / SET_ASIDE_NAME

    def lock(self, say: Callable[[str], None] = lambda line: None) -> None:
        """Create the folder, take its lock (refusing a folder in use), and put back an earlier run that a
        killed ``--overwrite`` left set aside."""
        check_run_folder(self.path, self.flag)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunFolderError(f"{self.flag} {self.path} cannot be created: {error.strerror}") from None
        lock = filelock.FileLock(str(self.path / LOCK_NAME), timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise RunFolderError(f"{self.flag} {self.path} is in use by another run ({self._owner()}); wait for it "
                                 "to finish, or choose another folder") from None
        except OSError as error:
            raise RunFolderError(f"{self.flag} {self.path} cannot be locked: {error.strerror}") from None
        self._lock = lock
        (self.path / OWNER_NAME).write_text(f"process {os.getpid()} on {socket.gethostname()}, since "
                                            f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        if self.set_aside_folder.exists():
            if (self.path / "last.npz").exists():  # the replacing run had checkpointed: the old one is gone
                shutil.rmtree(self.set_aside_folder)
            else:
                self._put_back()
                say(f"put back the run an interrupted --overwrite had set aside in {self.path}")

    def _owner(self) -> str:
        try:
            return (self.path / OWNER_NAME).read_text().strip()
        except OSError:
            return "owner unknown"

    def entries(self) -> list[str]:
        """What the folder holds, less lstmx's own lock files."""
        return sorted(p.name for p in self.path.iterdir() if p.name not in (LOCK_NAME, OWNER_NAME))

    def set_aside(self) -> list[str]:
        """Move the run files of an earlier run into :attr:`set_aside_folder`; the names moved."""
        moved = [name for name in self.entries() if is_run_file(name)]
        if moved:
            self.set_aside_folder.mkdir()
            for name in moved:
                os.replace(self.path / name, self.set_aside_folder / name)
        return moved

    def settle(self) -> bool:
        """After the run: drop the set-aside run when the new one wrote ``last.npz`` (True), else put it back,
        removing the new run's files (False). Without a set-aside run, nothing to do (True)."""
        if not self.set_aside_folder.exists():
            return True
        if (self.path / "last.npz").exists():
            shutil.rmtree(self.set_aside_folder)
            return True
        self._put_back()
        return False

    def _put_back(self) -> None:
        for name in self.entries():
            if is_run_file(name):
                (self.path / name).unlink()
        for item in self.set_aside_folder.iterdir():
            os.replace(item, self.path / item.name)
        self.set_aside_folder.rmdir()

    def release(self) -> None:
        if self._lock is not None:
            (self.path / OWNER_NAME).unlink(missing_ok=True)
            self._lock.release()
            self._lock = None
