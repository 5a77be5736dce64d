"""Test-only launcher: `python -m gpt124m ...`, except that the process stops for good right after
printing the console line that starts with $PAUSE_AFTER_LINE, and says so on the next line.

The SIGKILL test then kills a run at a known step however fast or slow the machine is. It needs
nothing from the trainer but its console output (printed by rank 0; the other ranks wait for
rank 0 at their next collective), so the code under test carries no test hook. Each process
writes its pid into $PAUSE_PID_DIR: torchrun starts its workers in sessions of their own, out of
reach of a kill of the launcher's process group.
"""

import os
import sys
import time

from gpt124m.cli import main


class PausingStdout:
    def __init__(self, stream, prefix: str):
        self.stream, self.prefix, self.line = stream, prefix, ""

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.line += text
        while "\n" in self.line:
            done, self.line = self.line.split("\n", 1)
            if done.startswith(self.prefix):
                self.stream.write(f"paused after: {done}\n")
                self.stream.flush()
                while True:
                    time.sleep(3600)
        return len(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


if __name__ == "__main__":
    pid_file = os.path.join(os.environ["PAUSE_PID_DIR"], str(os.getpid()))
    with open(pid_file, "w") as f:
        f.write("running\n")
    sys.stdout = PausingStdout(sys.stdout, os.environ["PAUSE_AFTER_LINE"])
    sys.exit(main())
