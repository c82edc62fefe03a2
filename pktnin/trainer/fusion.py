"""Decision fusion of the parallel model (paper Eq. 3): y = alpha * y1 + (1 - alpha) * y2.

alpha weighs the header branch (NIN1, y1); 1 - alpha weighs the body branch (NIN2, y2). It is chosen on the
validation set by macro-F1 over a grid. numpy only.
"""

from __future__ import annotations

import numpy as np

from pktnin.trainer.metrics import macro_f1

DEFAULT_GRID = np.round(np.arange(0.0, 1.0001, 0.01), 2)

# Macro-F1 values closer than this count as equal (they come from integer counts, so real ties are exact).
_TIE_TOLERANCE = 1e-12


def fuse(p1: np.ndarray, p2: np.ndarray, alpha: float) -> np.ndarray:
    """alpha * p1 + (1 - alpha) * p2."""
    return alpha * np.asarray(p1) + (1.0 - alpha) * np.asarray(p2)


def search_alpha(
    p1: np.ndarray, p2: np.ndarray, y_true: np.ndarray, grid: np.ndarray = DEFAULT_GRID
) -> tuple[float, np.ndarray]:
    """Pick alpha on `grid` maximizing the macro-F1 of argmax(alpha * p1 + (1 - alpha) * p2) against y_true.

    Returns (alpha, scores) with scores[i] the macro-F1 at grid[i]. Ties (a flat stretch of the curve is
    common) go to the grid value closest to 0.5, the unbiased mix; a remaining tie (0.5 - d vs 0.5 + d) goes
    to the smaller alpha.
    """
    p1 = np.asarray(p1, dtype=np.float64)
    p2 = np.asarray(p2, dtype=np.float64)
    grid = np.asarray(grid, dtype=np.float64)
    if p1.shape != p2.shape or p1.ndim != 2:
        raise ValueError(f"p1 and p2 must be equal [n, C] arrays, got {p1.shape} and {p2.shape}")
    if p1.shape[0] != np.asarray(y_true).size:
        raise ValueError(f"{p1.shape[0]} probability rows but {np.asarray(y_true).size} labels")
    if grid.size == 0 or grid.min() < 0.0 or grid.max() > 1.0:
        raise ValueError("alpha grid must be non-empty and within [0, 1]")
    num_classes = p1.shape[1]
    scores = np.array([macro_f1(y_true, fuse(p1, p2, a).argmax(axis=1), num_classes) for a in grid])
    best = np.flatnonzero(scores >= scores.max() - _TIE_TOLERANCE)
    distance = np.abs(grid[best] - 0.5)
    candidates = best[distance <= distance.min() + 1e-9]
    pick = candidates[np.argmin(grid[candidates])]
    return float(grid[pick]), scores
