"""Files: writing results so that nothing is lost (atomic replacement, one writer per path, early
checks), and the digest that names a file's content.

Every command writes its outputs through `atomic_output` (or `atomic_write` for text): the data go
to a temporary file in the target's own folder and are renamed over the target only once complete,
so a crash, Ctrl-C or a full disk never replaces an earlier complete result with a partial one.
`claim_outputs` checks every output path before any work and holds a lock on each, so a second run
writing the same path refuses instead of interleaving with the first.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any


def _temporary_sibling(path: Path) -> Path:
    """A fresh name beside `path` that keeps its suffix (writers such as OpenCV's and NumPy's
    choose the format, or add an extension, from it)."""
    handle, name = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(handle)
    # mkstemp makes the file private (0600); the result gets the mode a plain open() would give,
    # or keeps the mode of the file it replaces.
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    os.chmod(name, mode)
    return Path(name)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on a clean exit it is flushed to disk and renamed to
    `path`, on any exception (KeyboardInterrupt included) it is removed and `path` is untouched.

    For writers that take a file name (np.savez, torch.save, cv2.VideoWriter, savefig, ONNX).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_sibling(path)
    try:
        yield temporary
        _fsync_file(temporary)
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        if error.filename != str(temporary):
            raise
        # Name the file the user asked for, not our temporary one (a full disk, say).
        raise OSError(error.errno, error.strerror, str(path)) from error
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """`open(path, mode)` whose content replaces `path` only once the block completes."""
    if "w" not in mode:
        raise ValueError(f"atomic_write needs a write mode ('w', 'wb'), got {mode!r}")
    with atomic_output(path) as temporary, open(temporary, mode, **open_kwargs) as handle:
        yield handle
        handle.flush()


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_write(path, encoding="utf-8") as handle:
        handle.write(text)


class OutputLock:
    """An exclusive, non-blocking lock on one output path, held by this process until `release`.

    The lock lives in a hidden `.<name>.lock` file beside the output (an flock, so a crashed run
    never leaves a stale lock) and is removed on release.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(f".{self.path.name}.lock")
        self._handle: IO[bytes] | None = None

    def acquire(self) -> None:
        while True:
            handle = open(self.lock_path, "ab")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                raise ValueError(
                    f"{self.path} is being written by another run (lock {self.lock_path}); "
                    "wait for it to finish or choose another output path"
                ) from None
            # The previous holder may have removed the lock file between our open and our lock:
            # then we hold a lock on a name nobody else sees; take the current file instead.
            try:
                same = os.path.samestat(os.fstat(handle.fileno()), os.stat(self.lock_path))
            except FileNotFoundError:
                same = False
            if same:
                self._handle = handle
                return
            handle.close()

    def release(self) -> None:
        if self._handle is None:
            return
        self.lock_path.unlink(missing_ok=True)
        self._handle.close()
        self._handle = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def check_writable(path: Path, what: str) -> None:
    """Fail before any work when `path` cannot be written: its folder is made if missing; an
    existing directory or a folder without write permission is refused. Nothing is created at
    `path` itself, so an earlier result stays as it is until the new one is complete."""
    label = f"{what} {path}" if what else str(path)
    if path.is_dir():
        raise ValueError(f"cannot write {label}: it is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot write {label}: {error.strerror or error}") from error
    if not path.parent.is_dir():
        raise ValueError(f"cannot write {label}: {path.parent} is not a directory")
    if not os.access(path.parent, os.W_OK | os.X_OK) or (
        path.exists() and not os.access(path, os.W_OK)
    ):
        raise ValueError(f"cannot write {label}: permission denied")


@contextlib.contextmanager
def claim_outputs(outputs: Iterable[tuple[Path | None, str]]) -> Iterator[None]:
    """Check and lock every `(path, what)` output (None entries are skipped) before any work;
    the locks are held until the block ends. `what` names the option in messages (`--out`)."""
    with contextlib.ExitStack() as stack:
        for path, what in outputs:
            if path is None:
                continue
            path = Path(path)
            check_writable(path, what)
            stack.enter_context(OutputLock(path))
        yield


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
