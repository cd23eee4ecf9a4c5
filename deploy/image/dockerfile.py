"""BentoML's generated Dockerfile, trimmed for serving before it is built.

bentoml 1.4's v2 bentos ignore `docker.dockerfile_template`, and the Debian template always installs
`build-essential`, `git` and `gnupg2` (0.61 GB of the 1.18 GB CPU image) and leaves apt's caches behind
(0.08 GB): a serving image needs none of them, since every locked package installs from a wheel. So the build
context's Dockerfile is rewritten in three places:

- the system packages: `build-essential`, `git` and `gnupg2` dropped, `apt-get clean` and apt's package lists
  removed after the install (as the official python images' apt configuration does);
- the Python packages: `--only-binary :all:` (a package without a wheel fails the build, naming it, instead of
  needing a compiler that is no longer there) and `--no-cache` (no copy of every wheel in uv's cache);
- with --local-base, the FROM line names the debootstrapped stand-in instead of the official image.

Each rewrite must match exactly once; if BentoML's template changes, the build stops and says where.
"""

from __future__ import annotations

import re

from common.cli import UserError

UNUSED_SYSTEM_PACKAGES = ("build-essential", "git", "gnupg2")  # gnupg2: for apt keys of other repositories; none here
FROM = re.compile(r"^FROM (\S+) AS base-container$", re.M)
APT_INSTALL = re.compile(r"^RUN (apt-get update && apt-get install .*)$", re.M)
UV_INSTALL = re.compile(r"uv --directory \$INSTALL_ROOT pip install (?=-r )")


def _one(pattern: re.Pattern, text: str, what: str) -> re.Match:
    found = list(pattern.finditer(text))
    if len(found) != 1:
        raise UserError(
            f"BentoML's generated Dockerfile has {len(found)} {what} lines where deploy/image/dockerfile.py expects one: "
            "its template changed; update the rewrite there"
        )
    return found[0]


def base_image(text: str) -> str:
    return _one(FROM, text, "`FROM ... AS base-container`").group(1)


def for_serving(text: str, base: str | None = None) -> str:
    """The Dockerfile without a compiler or git, wheels only, on `base` when given."""
    start = _one(FROM, text, "`FROM ... AS base-container`")
    if base is not None:
        text = f"{text[: start.start(1)]}{base}{text[start.end(1) :]}"
    apt = _one(APT_INSTALL, text, "`RUN apt-get update && apt-get install`")
    packages = [w for w in apt.group(1).split() if w not in UNUSED_SYSTEM_PACKAGES]
    text = f"{text[: apt.start(1)]}{' '.join(packages)} && apt-get clean && rm -rf /var/lib/apt/lists/*{text[apt.end(1) :]}"
    uv = _one(UV_INSTALL, text, "`uv ... pip install -r`")
    return f"{text[: uv.end()]}--only-binary :all: --no-cache {text[uv.end() :]}"
