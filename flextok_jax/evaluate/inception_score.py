"""Inception Score (Salimans et al. 2016) from classifier logits.

IS = exp(E_x KL(p(y|x) || p(y))), computed on ``splits`` consecutive parts of the samples
(boundaries i*N//splits, as improved-GAN's code) and reported as mean and std over the parts.
The standard number (improved-GAN, the ADM evaluator, torch-fidelity) softmaxes all 1008
outputs of the 2015 Inception graph *without* the classifier bias: pass
``InceptionV3FID(...)["logits_unbiased"]``. The ADM evaluator splits into parts of 5000, which is
10 parts for its 50k samples.
"""
from __future__ import annotations

import numpy as np


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    peak = np.max(x, axis=axis, keepdims=True)
    return peak + np.log(np.sum(np.exp(x - peak), axis=axis, keepdims=True))


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """logits [N, C] -> (mean, std) of the per-split Inception Scores, float64."""
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2 or logits.shape[0] < splits or splits < 1:
        raise ValueError(f"logits must be [N >= splits, C] with splits >= 1, got shape {logits.shape}, splits {splits}")
    log_p = logits - _logsumexp(logits, axis=1)
    n = log_p.shape[0]
    scores = []
    for i in range(splits):
        part = log_p[i * n // splits : (i + 1) * n // splits]
        log_marginal = _logsumexp(part, axis=0) - np.log(part.shape[0])
        kl = np.sum(np.exp(part) * (part - log_marginal), axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))
