"""The host's pip settings that a build inside a container needs: a CA bundle (TLS interception, a private
index) and an index URL. Read from pip's own configuration (`pip config list`, then PIP_CERT and
PIP_INDEX_URL), passed to the build as read-only mounts: the bundle over the image's system bundle
(which apt, pip and uv with native TLS all read), a pip.conf and a uv.toml naming it. Nothing of the host
is written into the image or the repository.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # Debian's, in the image


@dataclass(frozen=True)
class PipSettings:
    cert: str | None  # a CA bundle on the host
    index_url: str | None

    @property
    def empty(self) -> bool:
        return self.cert is None and self.index_url is None


def host_pip_settings() -> PipSettings:
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    found = dict(re.findall(r"^(?:global|install)\.([\w-]+)='(.*)'$", out.stdout, re.M))
    cert = os.environ.get("PIP_CERT") or found.get("cert")
    index_url = os.environ.get("PIP_INDEX_URL") or found.get("index-url")
    if index_url and not index_url.startswith(("http://", "https://")):
        index_url = None  # a local directory of the host does not exist in the build
    return PipSettings(cert if cert and Path(cert).is_file() else None, index_url)


def build_mounts(settings: PipSettings, scratch: Path) -> list[str]:
    """`--volume` arguments for podman/buildah build."""
    if settings.empty:
        return []
    pip_conf, uv_toml = ["[global]"], []
    mounts = []
    if settings.cert:
        mounts.append(f"{settings.cert}:{SYSTEM_BUNDLE}:ro")
        pip_conf.append(f"cert = {SYSTEM_BUNDLE}")
        uv_toml.append("native-tls = true")
    if settings.index_url:
        pip_conf.append(f"index-url = {settings.index_url}")
        uv_toml.append(f'index-url = "{settings.index_url}"')
    (scratch / "pip.conf").write_text("\n".join(pip_conf) + "\n")
    (scratch / "uv.toml").write_text("\n".join(uv_toml) + "\n")
    mounts += [f"{scratch / 'pip.conf'}:/etc/pip.conf:ro", f"{scratch / 'uv.toml'}:/etc/uv/uv.toml:ro"]
    return mounts
