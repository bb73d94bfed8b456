"""Confidence intervals for means over nested replicates: a two-level bootstrap.

A study's replicates are nested: each training seed gives one trained model, measured on
several direction pairs and evaluation subsets. Those inner replicates share the model's
training noise, so treating them as independent draws would make an interval too narrow.
The two-level bootstrap resamples training seeds with replacement, then, within each drawn
seed, its inner replicates with replacement, and takes the mean of the seeds' means; the
interval is the percentile interval of those resampled means. With few training seeds (3 in
config/studies.yaml) a percentile interval is itself uncertain: read it as a guide, not a test.
"""
import numpy as np


def nested_means(groups: list, resamples: int, seed: int) -> np.ndarray:
    """`resamples` bootstrap means of the mean of the groups' means; `groups`: one 1-D array
    of inner replicates per training seed (sizes may differ)."""
    groups = [np.asarray(g, dtype=np.float64) for g in groups]
    if not groups or any(g.size == 0 for g in groups):
        raise ValueError("every training seed needs at least one replicate")
    rng = np.random.default_rng(seed)
    n = len(groups)
    drawn = rng.integers(0, n, size=(resamples, n))  # which seed fills each of the n slots
    # every seed's inner resample for every slot, then each slot takes the one of its drawn seed
    inner = np.stack([g[rng.integers(0, g.size, size=(resamples, n, g.size))].mean(axis=-1) for g in groups])
    slots = inner[drawn, np.arange(resamples)[:, None], np.arange(n)[None, :]]
    return slots.mean(axis=1)


def nested_interval(groups: list, resamples: int = 10000, seed: int = 0,
                    confidence: float = 0.95) -> tuple[float, float]:
    """(low, high): the percentile interval of the two-level bootstrap of the mean."""
    means = nested_means(groups, resamples, seed)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)
