"""The report's statistics: shares, bootstrap intervals over conversations, the sign test, and agreement.

Intervals are scipy's percentile bootstrap with whole conversations resampled (``paired``): the turns of one
conversation are not independent (a model that derails tends to stay derailed). The sign test is scipy's exact
binomial test. The two kappas are written here, and say why.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from demo.protocol import BEST_FIRST

LEVEL = 95  # the confidence level of every interval, in per cent
INTERVALS = ("excellent", "fail")  # the shares the paper's comparison turns on, and the ones given intervals


def pct(part: int, whole: int) -> float:
    return round(100 * part / whole, 1) if whole else 0.0


def shares(ratings: Iterable[str]) -> dict[str, Any]:
    """How many ratings, and each level's share in per cent, best first (the order of Figure 7's segments)."""
    counts = Counter(ratings)
    total = sum(counts.values())
    return {"turns": total, **{name: pct(counts[name], total) for name in BEST_FIRST}}


def _shares_of(*counts: np.ndarray, axis: int = -1) -> np.ndarray:
    """Each level's share (per cent, BEST_FIRST) of the ratings summed over conversations along ``axis``."""
    sums = np.stack([column.sum(axis=axis) for column in counts])
    return 100 * sums / sums.sum(axis=0)


def _difference_of(*counts: np.ndarray, axis: int = -1) -> np.ndarray:
    """The first model's shares minus the second's: ``counts`` holds the first's levels, then the second's."""
    half = len(BEST_FIRST)
    return _shares_of(*counts[:half], axis=axis) - _shares_of(*counts[half:], axis=axis)


def _percentile(data: tuple, statistic: Callable, vectorized: bool, resamples: int, seed: int) -> Any:
    """scipy's percentile bootstrap at LEVEL, seeded, the arrays of ``data`` resampled together: the one bootstrap
    every interval of the report comes from."""
    from scipy import stats  # a second or more to import: not for `--help`, nor for demo.judge's start

    return stats.bootstrap(
        data,
        statistic,
        paired=True,  # a unit is resampled with all its columns
        vectorized=vectorized,
        n_resamples=resamples,
        confidence_level=LEVEL / 100,
        method="percentile",
        rng=np.random.default_rng(seed),  # seeded: the same database gives the same report
    ).confidence_interval


def _columns(counts: np.ndarray, statistic: Callable, resamples: int, seed: int) -> list[list[float]] | None:
    """Percentile intervals of each of ``statistic``'s outputs, resampling the rows of ``counts`` (one unit each:
    a conversation, a prompt) whole, with replacement; none from fewer than two units."""
    if len(counts) < 2:
        return None
    found = _percentile(tuple(counts.T), statistic, True, resamples, seed)
    return [[round(float(low), 1), round(float(high), 1)] for low, high in zip(found.low, found.high, strict=True)]


def _intervals(counts: np.ndarray, statistic: Callable, resamples: int, seed: int) -> dict[str, list[float] | None]:
    """Intervals of ``statistic`` (one output per level, BEST_FIRST) for the INTERVALS levels."""
    found = _columns(counts, statistic, resamples, seed)
    if found is None:
        return dict.fromkeys(INTERVALS)
    return {name: found[column] for column, name in enumerate(BEST_FIRST) if name in INTERVALS}


def level_intervals(per_unit: list[Counter], levels: tuple[str, ...], resamples: int, seed: int) -> dict[str, Any]:
    """Each level's share (per cent of all counts) with its interval, resampling the units (``per_unit``: the
    counts of one prompt or conversation each): ``{level: [low, high] or None}``."""
    counts = np.array([[unit[name] for name in levels] for unit in per_unit], dtype=float)
    found = _columns(counts, _shares_of, resamples, seed)
    return {name: None if found is None else found[column] for column, name in enumerate(levels)}


def unit_intervals(units: int, statistic: Callable[[np.ndarray], np.ndarray], resamples: int, seed: int):
    """Intervals of each output of a fitted ``statistic`` over resamples of ``units`` units, each kept whole.
    ``statistic`` takes each unit's multiplicity, one row per resample (a fit weighted by them is the fit on the
    resample), and gives (outputs, resamples). None from fewer than two units."""
    if units < 2:
        return None

    def of_indices(index: np.ndarray, axis: int = -1) -> np.ndarray:
        rows = np.atleast_2d(index).astype(int)  # scipy asks for the sample itself (1-D) and the resamples (2-D)
        offsets = units * np.arange(len(rows))[:, None]  # one bincount for every resample at once
        counts = np.bincount((rows + offsets).ravel(), minlength=units * len(rows)).reshape(len(rows), units)
        found = statistic(counts.astype(float))
        return found[:, 0] if np.ndim(index) == 1 else found

    found = _percentile((np.arange(units),), of_indices, True, resamples, seed)
    return [[round(float(a), 1), round(float(b), 1)] for a, b in zip(found.low, found.high, strict=True)]


def share_intervals(per_conversation: list[Counter], resamples: int, seed: int) -> dict[str, list[float] | None]:
    """Intervals of one model's excellent and fail shares; ``per_conversation``: its ratings in each conversation."""
    counts = np.array([[c[name] for name in BEST_FIRST] for c in per_conversation], dtype=float)
    return _intervals(counts, _shares_of, resamples, seed)


def difference(paired: list[tuple[Counter, Counter]], resamples: int, seed: int) -> dict[str, Any]:
    """The first model's excellent and fail shares minus the second's (percentage points) over conversations where
    both were rated, each with its interval: ``{"excellent_diff": ..., "excellent_diff_ci": ..., ...}``."""
    counts = np.array([[c[name] for c in pair for name in BEST_FIRST] for pair in paired], dtype=float)
    point = _difference_of(*counts.T)
    intervals = _intervals(counts, _difference_of, resamples, seed)
    result: dict[str, Any] = {}
    for column, name in enumerate(BEST_FIRST):
        if name in INTERVALS:
            result[f"{name}_diff"] = round(float(point[column]), 1)
            result[f"{name}_diff_ci"] = intervals[name]
    return result


def sign_test(wins: int, losses: int) -> float | None:
    """Two-sided exact sign test of wins against losses (ties left out): the chance of a split at least this
    uneven if neither model were better. The paper's 7 better, 0 worse gives 0.016."""
    if wins + losses == 0:
        return None
    from scipy import stats

    return round(float(stats.binomtest(wins, wins + losses, 0.5).pvalue), 4)


# Both kappas by hand: scipy has none, and statsmodels' fleiss_kappa assumes the same number of raters on every
# item, while here a turn has as many raters as chose to give a second opinion (two, three, ...). Cohen's kappa
# would be scikit-learn's alone, a large dependency for five lines that answers nan where the report says None.
def fleiss_kappa(items: list[Counter]) -> tuple[float | None, float | None]:
    """Observed agreement P̄ and Fleiss' kappa, generalised to a varying number of raters per item.

    P_i = (Σ_j n_ij² − n_i) / (n_i (n_i − 1)); p_j = Σ_i n_ij / Σ_i n_i; P_e = Σ_j p_j²;
    κ = (P̄ − P_e) / (1 − P_e), undefined (None) when every rating falls in one category.
    """
    items = [item for item in items if sum(item.values()) >= 2]
    if not items:
        return None, None
    observed = []
    for item in items:
        n = sum(item.values())
        observed.append((sum(v * v for v in item.values()) - n) / (n * (n - 1)))
    p_bar = sum(observed) / len(observed)
    totals = sum(items, Counter())
    grand = sum(totals.values())
    p_e = sum((v / grand) ** 2 for v in totals.values())
    kappa = None if p_e >= 1 else (p_bar - p_e) / (1 - p_e)
    return p_bar, kappa


def cohen_kappa(pairs: list[tuple[str, str]]) -> tuple[float | None, float | None]:
    """Observed agreement p_o and Cohen's kappa of two raters over the same items, one (first, second) pair each.

    p_e = Σ_k (first's share of k) · (second's share of k); κ = (p_o − p_e) / (1 − p_e), undefined (None) when both
    put every item in the same one category."""
    if not pairs:
        return None, None
    n = len(pairs)
    p_o = sum(first == second for first, second in pairs) / n
    firsts, seconds = Counter(first for first, _ in pairs), Counter(second for _, second in pairs)
    p_e = sum(firsts[k] * seconds[k] for k in firsts) / (n * n)
    return p_o, None if p_e >= 1 else (p_o - p_e) / (1 - p_e)


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
