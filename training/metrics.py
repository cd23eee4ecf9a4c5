"""Quality and coverage figures computed from class predictions, features or 2D points.

Pure functions on tensors/arrays with known answers (tests/system/test_evaluate.py, tests/unit/test_toy.py);
the classifier, the generators and the data live elsewhere.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import linalg


# --- class histograms (MNIST classes, Stacked MNIST modes) ---------------------------------------
def class_histogram(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """(N,) integer labels -> (classes,) counts."""
    return torch.bincount(labels.flatten().long(), minlength=classes)


def kl_to_uniform(counts: torch.Tensor) -> float:
    """KL(p || uniform) in nats, p = counts / sum; 0 for a uniform histogram, log(K) for one class."""
    p = counts.double() / counts.sum()
    nz = p[p > 0]
    return float((nz * (nz * len(p)).log()).sum())


def classes_covered(counts: torch.Tensor, min_share_of_uniform: float = 0.5) -> int:
    """Classes holding at least `min_share_of_uniform` of the uniform share (N/K) of the samples.

    With thousands of samples every class collects a few misclassified ones, so "at least one
    sample" would call a collapsed generator complete; half the uniform share (5% of samples for
    10 classes) marks a class that the generator actually produces.
    """
    threshold = min_share_of_uniform * counts.sum() / len(counts)
    return int((counts >= threshold).sum())


def modes_hit(counts: torch.Tensor) -> int:
    """Modes with at least one sample: the VEEGAN/PacGAN count for Stacked MNIST's 1,000 modes."""
    return int((counts > 0).sum())


def classifier_score(probs: torch.Tensor) -> float:
    """Inception-Score-like figure (Salimans et al. 2016) with our classifier: exp E_x KL(p(y|x) || p(y)).

    Ranges from 1 (every sample the same class distribution) to the number of classes (confident
    predictions spread evenly over the classes). probs: (N, K) softmax outputs.
    """
    p = probs.double().clamp_min(1e-12)
    marginal = p.mean(0, keepdim=True)
    return float(torch.exp((p * (p.log() - marginal.log())).sum(1).mean()))


UNCLEAR_NATS = 0.5  # a prediction entropy above this is an unclear sample (3% of real training digits)


def unclear_share(probs: torch.Tensor, nats: float = UNCLEAR_NATS) -> float:
    """Share of samples whose predicted class distribution has entropy above `nats`: samples the
    classifier cannot read as one digit. The classifier score counts them through the mean entropy;
    this says whether its gap is many slightly unsure samples or a few unreadable ones. probs: (N, K)."""
    return float(unclear_mask(probs, nats).double().mean())


def unclear_mask(probs: torch.Tensor, nats: float = UNCLEAR_NATS) -> torch.Tensor:
    """(N, K) softmax outputs -> (N,) bool: the samples unclear_share counts."""
    p = probs.double().clamp_min(1e-12)
    return -(p * p.log()).sum(1) > nats


def confused_pairs(probs: torch.Tensor, top: int = 5, nats: float = UNCLEAR_NATS) -> list[tuple[int, int, int]]:
    """The class pairs the unclear samples sit between: (a, b, count) of their two most probable classes
    (a < b), most common first, at most `top`. probs: (N, K)."""
    counts: dict[tuple[int, int], int] = {}
    for a, b in probs[unclear_mask(probs, nats)].topk(2, dim=1).indices.tolist():
        key = (min(a, b), max(a, b))
        counts[key] = counts.get(key, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return [(a, b, n) for (a, b), n in ranked]


# --- Frechet distance ------------------------------------------------------------------------------
def feature_statistics(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(N, F) -> mean (F,) and covariance (F, F), float64."""
    x = features.double().cpu().numpy()
    return x.mean(0), np.cov(x, rowvar=False)


def frechet_distance(stats_a: tuple[np.ndarray, np.ndarray], stats_b: tuple[np.ndarray, np.ndarray]) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) (Heusel et al. 2017, the FID formula).

    Tr (S_a S_b)^(1/2) is taken as the sum of sqrt(eigenvalues) of the symmetric PSD matrix
    S_a^(1/2) S_b S_a^(1/2) (same eigenvalues): stable for the singular covariances of collapsed
    or untrained generators, where scipy's sqrtm of the non-symmetric product warns and drifts.
    """
    (mu_a, s_a), (mu_b, s_b) = stats_a, stats_b
    w, v = linalg.eigh(s_a)
    sqrt_a = (v * np.sqrt(w.clip(min=0))) @ v.T
    trace_sqrt = np.sqrt(linalg.eigvalsh(sqrt_a @ s_b @ sqrt_a).clip(min=0)).sum()
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(s_a) + np.trace(s_b) - 2.0 * trace_sqrt)


# --- 2D mixtures (the toy benchmark) ---------------------------------------------------------------
def mixture_figures(points: torch.Tensor, centers: torch.Tensor, std: float) -> dict:
    """Mode figures of VEEGAN (Srivastava et al. 2017) and PacGAN (Lin et al. 2018), table 1.

    A sample is high-quality when it lies within 3 standard deviations of its nearest mode; a mode
    is captured when at least one high-quality sample is nearest to it; reverse KL is
    KL(q || p) between the generated distribution q over modes (high-quality samples assigned to
    their nearest mode) and the true uniform p. points: (N, 2), centers: (K, 2).
    """
    dist = torch.cdist(points.double(), centers.double())  # (N, K)
    nearest_dist, nearest = dist.min(1)
    hq = nearest_dist <= 3.0 * std
    counts = class_histogram(nearest[hq], len(centers))
    return {
        "modes": int((counts > 0).sum()),
        "high_quality": float(hq.double().mean()),
        "reverse_kl": kl_to_uniform(counts) if counts.sum() > 0 else math.inf,
    }
