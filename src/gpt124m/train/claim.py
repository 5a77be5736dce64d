"""One run per OUT_DIR: a second run training into the same folder would interleave its metrics
with the first's and set aside or prune the other's checkpoints.

The main rank holds an advisory lock (`flock`) on the folder itself while it trains. The OS drops
it when the process ends, however it ends, so a killed run leaves nothing to clean up. Where
`fcntl` does not exist (Windows) runs are not guarded.
"""

from __future__ import annotations

import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


def busy(out: Path) -> ValueError:
    return ValueError(
        f"{out}: another run is training into this folder; wait for it to end, or use another "
        "--out-dir"
    )


class Claim:
    """The lock on one OUT_DIR; `release()` (or the process's end) gives it up."""

    def __init__(self, out: Path):
        self.fd: int | None = None
        if fcntl is None:
            return
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise busy(out) from None
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = None
