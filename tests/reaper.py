"""Run a command as a child subreaper: `python tests/reaper.py COMMAND ARGS...`.

tests/dockerd.py runs its private dockerd under it. A daemon killed with SIGKILL leaves
its children behind (dockerd: containerd and the containers' shims). Orphans go to the
nearest subreaper, so here they are reaped as they exit, instead of lingering as zombies
that a restarted dockerd takes for a containerd still running. SIGTERM and SIGINT are
passed on to the command; the reaper exits once it has no child left, with the command's
exit code.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

PR_SET_CHILD_SUBREAPER = 36


def main(argv: list[str]) -> int:
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    pid = os.fork()
    if pid == 0:
        os.execvp(argv[0], argv)

    def forward(sig: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = 0
    while True:
        try:
            child, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return code
        if child == pid:
            code = os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
