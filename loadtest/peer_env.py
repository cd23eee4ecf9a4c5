"""The PyTriton peer's Python environment: made once under .venv-peers/, reused while its requirements are unchanged.

    python = triton_python()      # .venv-peers/triton/bin/python, with loadtest/triton-requirements.txt installed
    env = triton_env(python)      # the environment variables its server needs

nvidia-pytriton requires numpy < 2; the project's training stack requires numpy 2. So the peer gets a venv of its
own, made from this interpreter with pip from the package index (the same index the project installs from).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from common.cli import UserError
from common.server import REPO

REQUIREMENTS = REPO / "loadtest" / "triton-requirements.txt"
VENV = REPO / ".venv-peers" / "triton"
STAMP = "requirements.sha256"  # in the venv: the hash of the requirements it was made from


def triton_python(progress=print) -> Path:
    """The peer venv's interpreter, made (about a minute, ~400 MB) if missing or made from other requirements."""
    python = VENV / "bin" / "python"
    want = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    stamp = VENV / STAMP
    if python.is_file() and stamp.is_file() and stamp.read_text().strip() == want:
        return python
    progress(f"making the PyTriton peer's environment {VENV.relative_to(REPO)} (once) ...")
    log = VENV.parent / "triton-install.log"
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as f:
        for argv in (
            [sys.executable, "-m", "venv", "--clear", str(VENV)],
            [str(python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)],
        ):
            if subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT).returncode != 0:
                raise UserError(f"could not make the PyTriton peer's environment: `{' '.join(argv)}` failed; see {log}")
    stamp.write_text(want + "\n")
    return python


def triton_env(python: Path) -> dict[str, str]:
    """The variables the PyTriton server needs: its Python backend must load this interpreter's libpython, which it
    finds only when that library's folder comes first on LD_LIBRARY_PATH (else it may load the system's libpython and
    fail to load the model with "'_thread.RLock' object has no attribute '_recursion_count'")."""
    libdir = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"], capture_output=True, text=True, check=True
    ).stdout.strip()
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
    env["PYTHONPATH"] = str(REPO)  # the peer imports contract/, service/images.py and loadtest/ from the checkout
    return env
