"""The files the workers of one server share (service/server_dir.py, service/model_set.py's PinsFile): one folder per
`bentoml serve` run, however often its pid repeats, and pins that two workers can write at once."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

from service import server_dir as sd
from service.model_set import PinsFile


@pytest.fixture(autouse=True)
def tmp_tempdir(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    sd.server_dir.cache_clear()
    yield tmp_path
    sd.server_dir.cache_clear()


def test_one_folder_per_run_and_the_folders_of_ended_runs_swept(tmp_tempdir):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    parent = os.getppid()
    stale = [
        tmp_tempdir / f"dcgan-models-{gone}-{sd._started(os.getpid())}",  # a process that has ended
        tmp_tempdir / f"dcgan-models-{parent}-1",  # this pid, started at another time: a container restarted (pid 1 again)
        tmp_tempdir / f"dcgan-models-{parent}",  # an older release's name
    ]
    live = tmp_tempdir / f"dcgan-models-{os.getpid()}-{sd._started(os.getpid())}"  # another server, still running
    other_kind = tmp_tempdir / f"dcgan-drain-{gone}-1"
    for folder in (*stale, live, other_kind):
        folder.mkdir()
        (folder / "pins.json").write_text("{}")
    folder = sd.server_dir("models")
    assert folder == tmp_tempdir / f"dcgan-models-{parent}-{sd._started(parent)}" and folder.is_dir()
    assert not any(f.exists() for f in stale) and live.exists() and other_kind.exists()


def test_a_pid_is_a_worker_of_this_server_only_while_it_runs_under_the_same_parent():
    assert sd.child_of_server(os.getpid())  # a process under the same parent as this one
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert not sd.child_of_server(child.pid)  # alive, but a child of this one: a pid reused by another process
    finally:
        child.kill()
        child.wait()
    assert not sd.child_of_server(child.pid)  # gone


def test_pins_of_two_workers_both_count_and_each_change_is_seen():
    first, second = PinsFile(), PinsFile()  # two workers' views of one file
    first.pin("a", "a:1")
    second.pin("b", "b:1")
    assert first.read() == second.read() == {"a": "a:1", "b": "b:1"}
    mtime = first.path.stat().st_mtime_ns
    second.pin("a", "a:2")
    os.utime(first.path, ns=(mtime, mtime))  # a coarse clock: the same timestamp as the version first saw
    assert first.read() == {"a": "a:2", "b": "b:1"}
