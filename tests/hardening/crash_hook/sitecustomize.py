"""Fault injection for the hardening tests, loaded by every Python process of a child run (this
folder is put first on its PYTHONPATH): when a process renames a file onto the path named by
``MMDATA_TEST_CRASH_AT`` (a shard's ``_stats.json``), the whole session is SIGKILLed at that point,
once (``MMDATA_TEST_CRASH_MARKER`` records that it fired). It uses the interpreter's audit hooks, so
no code of mmdata is replaced: the crash lands between the tar's rename and the stats write of the
real code path."""

import os
import signal
import sys

_TARGET = os.environ.get("MMDATA_TEST_CRASH_AT")
_MARKER = os.environ.get("MMDATA_TEST_CRASH_MARKER")


def _session_pids():
    session = os.getsid(0)
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                with open(f"/proc/{name}/stat") as handle:
                    if int(handle.read().rsplit(")", 1)[1].split()[3]) == session:
                        pids.append(int(name))
            except (OSError, IndexError, ValueError):
                pass
    return pids


def _hook(event, args):
    if event == "os.rename" and os.fspath(args[1]) == _TARGET and not os.path.exists(_MARKER):
        with open(_MARKER, "w") as handle:
            handle.write(f"{os.getpid()} {os.fspath(args[0])}\n")
        for pid in _session_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        os.kill(os.getpid(), signal.SIGKILL)


if _TARGET and _MARKER:
    sys.addaudithook(_hook)
