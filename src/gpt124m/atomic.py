"""Write files so that a crash never leaves a partial file under the final name."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _default_file_mode() -> int:
    """What `open()` would give a new file: 0o666 less the umask (mkstemp's files are 0o600)."""
    return 0o666 & ~_umask()


def default_dir_mode() -> int:
    """What `mkdir()` would give a new folder: 0o777 less the umask (mkdtemp's are 0o700)."""
    return 0o777 & ~_umask()


def fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new entry in `path` durable; a no-op where directories cannot be
    opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # some filesystems refuse fsync on a directory
            os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it into place."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        fsync_file(tmp)
        os.chmod(tmp, _default_file_mode())
        os.replace(tmp, final)
        fsync_dir(final.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_save_png(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """A matplotlib figure as a PNG, written atomically, then closed: pyplot keeps every figure
    it made alive until it is closed."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path


def check_out_dir(path: str | os.PathLike, flag: str = "--out-dir") -> Path:
    """`path` as a Path, once it is a folder this process can write in or could create: a
    one-line OSError otherwise, before the work whose results go there rather than after it.
    Creates nothing, so a run that fails later leaves no empty folder behind."""
    out = Path(path).expanduser()
    probe = out.absolute()
    while not (probe.exists() or probe.is_symlink()) and probe != probe.parent:
        probe = probe.parent  # exists() is also False below a file: the file stops the climb
    if not probe.is_dir():
        where = "" if probe == out.absolute() else f"{probe} is "
        kind = "a file, not a directory" if probe.is_file() else "exists and is not a directory"
        raise NotADirectoryError(f"{flag} {path}: {where}{kind}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag} {path}: {probe} is not writable")
    return out
