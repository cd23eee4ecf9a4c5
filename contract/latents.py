"""How a seed becomes the generator's input: a documented, stable function of the seed alone.

The same seed gives the same latents on every server, at every load, in every batch, and any
client with numpy can reproduce them (the manifest records LATENTS).
"""

from __future__ import annotations

import numpy as np

LATENTS = "numpy.random.default_rng(seed).standard_normal((n, nz), dtype=float32)"


def latents_for_seed(seed: int, n: int, nz: int) -> np.ndarray:
    """The latent batch for `seed` (see LATENTS): (n, nz) float32, N(0, 1), a function of the seed alone."""
    return np.random.default_rng(seed).standard_normal((n, nz), dtype=np.float32)
