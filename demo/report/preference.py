"""Two fits over pairwise judgments: a length-controlled preference and a Bradley–Terry ranking.

Both are a logistic regression with fractional outcomes (a win 1, a tie ½, a loss 0), fitted here by Newton's method
with a small ridge: a handful of parameters and a few hundred judgments, refitted for every bootstrap resample, so
numpy in milliseconds. The ridge keeps a clean sweep (one model always winning, possible on a few prompts) finite
instead of diverging; on real counts it moves nothing visible.

- **Length control**: AlpacaEval's (Dubois et al. 2024, "Length-Controlled AlpacaEval", arXiv 2404.04475) without
  its per-instruction term: ``logit P(model preferred) = a + b · tanh(Δchars / sd(Δchars))``; the controlled
  preference is the model's share at no length difference, ``100 · sigmoid(a)``. People and judges favour longer
  answers; this asks what the preference would be were the two answers the same length.
- **Bradley–Terry**: LMArena's model (``arena-rank``'s ``BradleyTerry``: ``P(i beats j) = sigmoid(r_i − r_j)``,
  ties as half a win, shown on the Elo scale ``1000 + 400 · r / ln 10``). ``arena-rank`` itself (0.1.1) pins
  ``numpy==2.3.3`` and ``jax==0.8.1`` with optax: a second array framework and a numpy downgrade for a fit of a few
  parameters, so the same likelihood is fitted here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

RIDGE = 1e-3  # the penalty on every coefficient, against clean sweeps (see above)
SCORE = {"win": 1.0, "tie": 0.5, "loss": 0.0}  # a tie is half a win, in both fits (as arena-rank counts one)
ELO_BASE, ELO_SCALE, ELO_START = 10.0, 400.0, 1000.0  # arena-rank's defaults: its scores read like LMArena's
LENGTH_METHOD = (
    "AlpacaEval-style length control (Dubois et al. 2024, arXiv 2404.04475), without its per-prompt term: a logistic"
    " regression of the outcome (win 1, tie 0.5, loss 0) on tanh(length difference / its standard deviation);"
    " the preference at zero length difference, 100 * sigmoid(intercept)"
)
RANKING_METHOD = (
    "Bradley-Terry (LMArena's model, as arena-rank fits it; ties as half a win), maximum likelihood with a ridge"
    f" of {RIDGE}, on the Elo scale 1000 + 400 * r / ln 10; 95 % percentile bootstrap over prompts"
)


def logistic(features: np.ndarray, outcomes: np.ndarray, weights: np.ndarray, steps: int = 50) -> np.ndarray:
    """The coefficients of ``logit P = features @ beta`` for outcomes in [0, 1], by penalised Newton steps, once per
    row of ``weights`` (how often each judgment is counted: all ones, or a bootstrap resample's multiplicities),
    all rows at once: (resamples, judgments) -> (resamples, coefficients)."""
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    beta = np.zeros((len(weights), features.shape[1]))
    ridge = RIDGE * np.eye(features.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(beta @ features.T)))
        gradient = ((outcomes - p) * weights) @ features - RIDGE * beta
        hessian = np.einsum("bn,ni,nj->bij", weights * p * (1 - p), features, features) + ridge
        step = np.linalg.solve(hessian, gradient[..., None])[..., 0]
        beta += step
        if np.abs(step).max() < 1e-9:
            break
    return beta


def length_controlled(outcomes: Sequence[str], differences: Sequence[float], weights: np.ndarray) -> np.ndarray:
    """The model's preference (per cent; a tie half) at no length difference, per row of ``weights``;
    ``differences``: its answer's characters minus the baseline's, one per judgment."""
    delta = np.asarray(differences, dtype=float)
    spread = delta.std()
    feature = np.tanh(delta / spread) if spread > 0 else np.zeros_like(delta)
    design = np.column_stack([np.ones_like(delta), feature])
    intercept = logistic(design, np.array([SCORE[o] for o in outcomes]), weights)[:, 0]
    return 100 / (1 + np.exp(-intercept))


def bradley_terry(sources: Sequence[str], matches: Sequence[tuple[str, str, str]], weights: np.ndarray) -> np.ndarray:
    """Each source's score on the Elo scale, in the order of ``sources``, per row of ``weights``; ``matches``:
    (model, baseline, outcome from the model's side)."""
    index = {name: i for i, name in enumerate(sources)}
    design = np.zeros((len(matches), len(sources)))
    for row, (model, baseline, _) in enumerate(matches):
        design[row, index[model]] += 1.0
        design[row, index[baseline]] -= 1.0
    ratings = logistic(design, np.array([SCORE[outcome] for _, _, outcome in matches]), weights)
    ratings -= ratings.mean(axis=1, keepdims=True)  # only differences are identified: centred
    return ELO_START + ELO_SCALE / math.log(ELO_BASE) * ratings
