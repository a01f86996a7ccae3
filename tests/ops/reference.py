"""Independent reference implementations used as test oracles."""

import numpy as np


def optimal_sse(values: np.ndarray, k: int, weights=None) -> float:
    """Optimal weighted k-means squared error of 1-D data, by an O(k n^2) dynamic program."""
    v, inverse = np.unique(np.asarray(values, dtype=np.float64).ravel(), return_inverse=True)
    w = np.bincount(inverse.ravel(), None if weights is None else np.asarray(weights, np.float64).ravel(), len(v))
    keep = w > 0
    v, w = v[keep], w[keep]
    if len(v) <= k:
        return 0.0
    v = v - np.average(v, weights=w)
    cw = np.concatenate([[0.0], np.cumsum(w)])
    cs = np.concatenate([[0.0], np.cumsum(w * v)])
    cq = np.concatenate([[0.0], np.cumsum(w * v * v)])
    i, j = np.arange(len(v) + 1)[:, None], np.arange(len(v) + 1)[None, :]
    mass, total, squares = cw[j] - cw[i], cs[j] - cs[i], cq[j] - cq[i]
    with np.errstate(divide="ignore", invalid="ignore"):
        cost = np.where(mass > 0, squares - total * total / mass, 0.0)
    cost = np.where(i <= j, np.maximum(cost, 0.0), np.inf)
    best = cost[0]
    for _ in range(k - 1):
        best = np.min(best[:, None] + cost, axis=0)
    return float(best[-1])


def sse_to_nearest(values: np.ndarray, table: np.ndarray, weights=None) -> float:
    x = np.asarray(values, dtype=np.float64).ravel()
    d = np.min((x[:, None] - np.asarray(table, np.float64).ravel()[None, :]) ** 2, axis=1)
    return float(np.sum(d if weights is None else d * np.asarray(weights, np.float64).ravel()))
