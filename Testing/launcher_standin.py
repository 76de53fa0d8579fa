"""A stand-in for the CTK application launcher that Slicer's `PythonSlicer` is, for the worker tests.

`PythonSlicer` (commontk/AppLauncher) sets up Slicer's environment, then starts the real interpreter
(`python-real`) as its child with the same standard input, output and error, waits for it and exits with its
exit code. Killing the launcher does not kill that child. This program does the same with any Python:

    python launcher_standin.py <python> <arguments...>

Its only extra: it writes its child's pid to the file named by MAFM3_LAUNCHER_CHILD_PID, when set, so a test
can check that the process that did the work is gone.
"""

from __future__ import annotations

import os
import subprocess
import sys


def main() -> int:
    child = subprocess.Popen(sys.argv[1:])  # inherits stdin, stdout and stderr, as the launcher's child does
    pid_file = os.environ.get("MAFM3_LAUNCHER_CHILD_PID")
    if pid_file:
        with open(pid_file, "w", encoding="utf-8") as file:
            file.write(str(child.pid))
    return child.wait()


if __name__ == "__main__":
    sys.exit(main())
