"""Latent interpolation between two seeds: frames along the great circle from one latent to the other.

Why spherical: a draw from N(0, I) in nz dimensions lies close to the sphere of radius sqrt(nz).
The straight line between two draws cuts inside it (its midpoint has norm about sqrt(nz / 2)),
where the generator saw no training latents; the arc (slerp) keeps the norm and so stays where
the generator was trained (White 2016, "Sampling Generative Networks", arXiv 1609.04468).
"""

from __future__ import annotations

import numpy as np

from contract.latents import latents_for_seed

PARALLEL_SIN = 1e-6  # below this sin(angle) the great circle is undefined (same or opposite direction)


def slerp(a: np.ndarray, b: np.ndarray, steps: int) -> np.ndarray:
    """(nz,), (nz,) -> (steps, nz) float32, White's slerp at t = k / (steps - 1); row 0 is exactly a, the last exactly b.

    sin((1-t)w)/sin(w) a + sin(tw)/sin(w) b, w the angle between a and b: for a and b of equal norm,
    the arc of the circle through both at constant speed; otherwise the norm moves smoothly from |a| to |b|.
    """
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    t = np.linspace(0.0, 1.0, steps)[:, None]  # (steps, 1)
    cos = np.dot(a64, b64) / (np.linalg.norm(a64) * np.linalg.norm(b64))
    omega = np.arccos(np.clip(cos, -1.0, 1.0))
    sin = np.sin(omega)
    if sin < PARALLEL_SIN:
        return ((1.0 - t) * a64 + t * b64).astype(np.float32)  # the line is the only path left
    return (np.sin((1.0 - t) * omega) / sin * a64 + np.sin(t * omega) / sin * b64).astype(np.float32)


def interpolation_latents(seed_a: int, seed_b: int, steps: int, nz: int) -> np.ndarray:
    """(steps, nz) float32: from image 0 of seed_a to image 0 of seed_b (the latents of /sample with that seed)."""
    return slerp(latents_for_seed(seed_a, 1, nz)[0], latents_for_seed(seed_b, 1, nz)[0], steps)
