"""A folder in /tmp shared by the workers of one `bentoml serve` run, and by no other run.

The workers of a server share small files: drain markers (service/drain.py), version pins and what each worker
serves (service/model_set.py). The folder is named by their common parent, the `bentoml serve` process: its pid
and its start time, since a pid alone repeats (in a container `bentoml serve` is pid 1 on every start, and the
pod's /tmp, an emptyDir, outlives a container restart). Folders of runs whose process is gone are removed when a
worker of a new run first asks for its folder.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path


def _started(pid: int) -> str:
    """The start time of process `pid` in clock ticks after boot (/proc/PID/stat); "gone" when there is no such
    process, "" where there is no /proc to tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return "gone" if Path("/proc/self/stat").exists() else ""
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[19]  # field 22, counted after the command name (which may hold spaces)


def _live(pid: int, started: str) -> bool:
    return _started(pid) == started


@functools.cache
def server_dir(kind: str) -> Path:
    """/tmp/dcgan-KIND-PPID-START of this worker's `bentoml serve` run, created; stale folders of KIND swept first."""
    ppid = os.getppid()
    folder = Path(tempfile.gettempdir()) / f"dcgan-{kind}-{ppid}-{_started(ppid)}"
    for old in Path(tempfile.gettempdir()).glob(f"dcgan-{kind}-*"):
        pid, _, started = old.name.removeprefix(f"dcgan-{kind}-").partition("-")
        if old != folder and old.is_dir() and (not pid.isdigit() or not _live(int(pid), started)):
            shutil.rmtree(old, ignore_errors=True)
    folder.mkdir(exist_ok=True)
    return folder


def child_of_server(pid: int) -> bool:
    """Whether `pid` is a live worker of this worker's server (its parent is ours): not a pid reused by another."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return not Path("/proc/self/stat").exists() and _kill0(pid)
    except OSError:
        return _kill0(pid)
    return int(stat.rpartition(")")[2].split()[1]) == os.getppid()  # field 4: the parent's pid


def _kill0(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
