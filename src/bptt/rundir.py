"""A run folder's life cycle: one writer at a time, and no earlier run ever lost.

``bptt train``, ``sine`` and ``series`` write a run folder (checkpoints, metrics, plots). The
rules, in the order a run meets them:

1. **One writer.** An OS lock (``flock``) on ``.NAME.lock`` beside the folder ``NAME`` is held
   for the whole run; it holds the writer's process id, so a second writer is refused in one
   line naming that process. The kernel drops the lock when its process dies, however it dies,
   so a lock left by a dead process is simply taken over. The lock file lives beside the
   folder, not in it, so it is the same file before the folder exists, while it is created,
   and after ``--overwrite`` has moved an earlier folder aside.
2. **Checks first.** :meth:`RunFolder.check` refuses ``--out`` naming a file, and a folder that
   already holds something, unless the run resumes it (``--resume``) or replaces it
   (``--overwrite``). The jobs call it once the settings and the data are validated; until
   :meth:`RunFolder.create` nothing on disk has changed but the lock file.
3. **Created after the first step.** :meth:`RunFolder.create` is called once the first training
   step has run. Only then does ``--overwrite`` move the earlier folder aside, to
   ``NAME.previous-YYYYmmdd-HHMMSS`` beside it (renamed, never deleted), and make the new one.
   A run that fails before its first step leaves the earlier run as it was.

Under torchrun rank 0 alone locks, creates and writes; the other ranks only check.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked; the message is one line."""


class FolderLocked(RunFolderError):
    """Another process holds the run folder's lock."""


def lock_path(out: Path) -> Path:
    """The lock file of run folder ``out``: ``.NAME.lock`` beside it."""
    return out.parent / f".{out.name}.lock"


def aside_path(out: Path, when: float | None = None) -> Path:
    """Where ``--overwrite`` moves an earlier run: ``NAME.previous-YYYYmmdd-HHMMSS`` beside it
    (``-2``, ``-3``, ... appended when that name is taken)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
    base = out.parent / f"{out.name}.previous-{stamp}"
    path, n = base, 1
    while path.exists() or path.is_symlink():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def check_output_folder(out: str | Path, flag: str = "--out") -> Path:
    """``out`` as a Path, refused in one line when it names something that is not a folder."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"expected {flag} to name a folder, got {path}, which is a file")
    if not path.resolve().name:
        raise RunFolderError(f"expected {flag} to name a folder of its own, got {path}")
    return path


def _contents(out: Path, shown: int = 4) -> str:
    names = sorted(p.name for p in out.iterdir())
    return ", ".join(names[:shown]) + (f", ... ({len(names)} entries)" if len(names) > shown
                                       else "")


class RunFolder:
    """One run's output folder; see the module docstring for its life cycle.

    ``verb`` names the command in messages; ``resume``: the run continues the folder's run (it
    must exist; the job checks its checkpoint); ``overwrite``: an earlier run there is moved
    aside once the first step has run; ``writer``: this process writes (rank 0 under
    torchrun); ``log`` receives the line saying where an earlier run went.
    """

    def __init__(self, out: str | Path, *, verb: str, resume: bool = False,
                 overwrite: bool = False, writer: bool = True,
                 log: Callable[[str], None] | None = None) -> None:
        if resume and overwrite:
            raise RunFolderError("expected --resume (continue the run in --out) or --overwrite "
                                 "(replace it), got both")
        self.out = Path(out).expanduser()
        self.verb, self.resume, self.overwrite, self.writer = verb, resume, overwrite, writer
        self.log = log
        self.ready = resume                               # a resumed run's folder exists
        self.moved_to: Path | None = None
        self._lock: _Lock | None = None

    # -- 1. one writer ------------------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[RunFolder]:
        """Hold the folder's lock (writers only) for the ``with`` block."""
        check_output_folder(self.out)
        if not self.writer:
            yield self
            return
        self._lock = _Lock(lock_path(self.out.resolve()), self.out, self.verb)
        self._lock.acquire()
        try:
            yield self
        finally:
            self._lock.release()
            self._lock = None

    # -- 2. checks first ------------------------------------------------------------------------
    def check(self) -> None:
        """Refuse a file, or a folder holding an earlier run this run would replace unasked."""
        out = check_output_folder(self.out)
        if self.resume:
            return                                        # the job checks the checkpoint
        if out.is_dir() and any(out.iterdir()) and not self.overwrite:
            resume = "continue it with --resume, " if self.verb == "train" else ""
            raise RunFolderError(
                f"expected a new or empty run folder, but {out} already holds a run "
                f"({_contents(out)}); {resume}replace it with --overwrite (the earlier run is "
                f"moved aside to {out.name}.previous-<date>-<time>, not deleted), or choose "
                f"another --out")

    # -- 3. created after the first step -------------------------------------------------------
    def create(self) -> bool:
        """Make the folder (once; writers only): with ``overwrite``, move an earlier run aside
        first. Call it once the first training step has run; True when it made the folder
        now (False after that, for a resumed run, and on ranks that do not write)."""
        if self.ready or not self.writer:
            return False
        out = self.out
        if self.overwrite and out.is_dir() and any(out.iterdir()):
            self.moved_to = aside_path(out)
            os.rename(out, self.moved_to)
            if self.log is not None:
                self.log(f"--overwrite: the earlier run in {out} is now in {self.moved_to}")
        out.mkdir(parents=True, exist_ok=True)
        self.ready = True
        return True


class _Lock:
    """An exclusive, non-blocking ``flock`` on ``path`` holding this process's id."""

    def __init__(self, path: Path, out: Path, verb: str) -> None:
        self.path, self.out, self.verb = path, out, verb
        self.fd: int | None = None
        self.made: list[Path] = []                        # parent folders made for the lock

    def acquire(self) -> None:
        missing = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.made = missing                           # deepest first
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
                if not _try_lock(fd):
                    holder = _holder(fd)
                    os.close(fd)
                    raise FolderLocked(
                        f"run folder {self.out} is in use: {holder} holds its lock "
                        f"{self.path}; wait for it to end, or choose another --out")
                # the previous holder may have removed the file between our open and lock
                try:
                    same = os.path.samestat(os.fstat(fd), os.stat(self.path))
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)
            os.ftruncate(fd, 0)                           # a dead holder's id: taken over
            os.write(fd, f"{os.getpid()} bptt {self.verb} on {socket.gethostname()}\n"
                     .encode())
            self.fd = fd
        except OSError as e:
            self._remove_parents()
            raise RunFolderError(f"expected to lock run folder {self.out} with {self.path}, but "
                                 f"{e.strerror or e}") from None
        except BaseException:
            self._remove_parents()
            raise

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)             # still held: no one else has it
        except OSError:
            pass                                          # a read-only parent: left, unlocked
        os.close(self.fd)
        self.fd = None
        self._remove_parents()

    def _remove_parents(self) -> None:
        """The folders made only to hold the lock, when the run never wrote into them (the
        first one that is not empty stops it)."""
        for p in self.made:
            try:
                p.rmdir()
            except OSError:
                break
        self.made = []


def _try_lock(fd: int) -> bool:
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True
    import msvcrt  # pragma: no cover - Windows

    try:  # pragma: no cover
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:  # pragma: no cover
        return False
    return True  # pragma: no cover


def _holder(fd: int, wait: float = 0.5) -> str:
    """"process PID (bptt VERB on HOST)" from a held lock file; a holder that has just locked
    may not have written its id yet, so wait for it a moment."""
    deadline = time.monotonic() + wait
    while True:
        try:
            text = os.pread(fd, 256, 0).decode("utf-8", "replace").strip()
        except OSError:
            text = ""
        if text or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    pid, _, what = text.partition(" ")
    return f"process {pid} ({what})" if pid.isdigit() else "another process"
