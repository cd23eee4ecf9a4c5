"""Where the served generator comes from: the BentoML model store, seeded with the committed default.

Resolution: the tag in DCGAN_MODEL, else `dcgan-generator:latest`. When the store holds no
`dcgan-generator` at all (a fresh clone), the committed artifact `artifacts/default/` is registered
first, so `bentoml serve service:svc` works without a manual step. Inside a built bento the model is
packed with the bento and found in its own store; `artifacts/` is not needed there.
"""

from __future__ import annotations

from pathlib import Path

import attrs
from bentoml.exceptions import BentoMLException
from bentoml.models import BentoModel

from contract.artifact import ArtifactError, verify


@attrs.frozen
class GeneratorModel(BentoModel):
    """A BentoModel reference that registers `default_artifact` when the store has no model of its name.

    BentoML resolves class-attribute models in the `bentoml serve` parent (and in `bentoml build`)
    before any service hook runs, so the registration has to live here, in the lookup itself.
    Only a `:latest` reference falls back; a pinned version that is missing stays an error.
    """

    default_artifact: Path | None = attrs.field(default=None, eq=False)

    @property
    def stored(self):
        found = BentoModel.stored.fget(self)
        if found is None and self.tag.version in (None, "latest") and self.default_artifact is not None:
            self._register_default()
            found = BentoModel.stored.fget(self)
        return found

    def resolve(self, base_path=None):
        """The stored model, never a download: where BentoML would fetch a missing model from BentoCloud (and, on
        the pod's read-only root, fail writing its cloud config with a traceback), start-up stops with one line."""
        if self.stored is None:
            raise BentoMLException(
                f"model {self.tag} is not in the BentoML model store (nor packed in this bento): set DCGAN_MODEL to a tag "
                "that `bentoml models list` shows, or build the bento with it (DCGAN_MODEL=TAG bentoml build)"
            )
        return BentoModel.resolve(self, base_path)

    def _register_default(self) -> None:
        from contract.store import register  # torch-free; only needed on a fresh store

        if not self.default_artifact.is_dir():
            raise BentoMLException(
                f"the BentoML model store has no {self.tag.name!r} model and there is no default artifact at "
                f"{self.default_artifact}: export one with `python -m export RUN_DIR` or set DCGAN_MODEL to a stored tag"
            )
        try:
            register(self.default_artifact, name=self.tag.name)  # hash-checks the artifact first
        except ArtifactError as e:
            raise BentoMLException(f"cannot register the default artifact: {e}") from None


def verified_manifest(model_dir: str | Path, tag: str) -> dict:
    """Hash-check a stored model's files against its manifest; any mismatch stops start-up with one line."""
    try:
        return verify(model_dir)
    except ArtifactError as e:
        # BentoMLException: `bentoml serve` prints it as one line and exits instead of restarting a worker.
        raise BentoMLException(f"model {tag} is unusable: {e}") from None
