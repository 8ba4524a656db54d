"""The paper's own figures, set beside ours in every table and figure."""

from __future__ import annotations

from typing import Any

# Figure 7 and section 4.3 of arXiv 2305.11206: 10 live conversations, each turn rated by the authors.
PAPER: dict[str, Any] = {
    "zero-shot": {"excellent": 45.2, "pass": 19.1, "fail": 35.7, "fails_per_turns": "15 in 42"},
    "dialogue": {"excellent": 76.1, "pass": 21.7, "fail": 2.2, "fails_per_turns": "1 in 46"},
    "verdicts": {"better": 7, "tied": 3, "of": 10},
}
PAPER_BARS = {"zero-shot": "LIMA zero-shot (paper)", "dialogue": "LIMA dialogue (paper)"}

# The rest of the paper's human evaluation (arXiv 2305.11206, section 4), only numbers its text states. Figures 1
# and 2 are pictures whose per-bar values no text we could read gives (searched: the arXiv abstract, the NeurIPS
# 2023 proceedings page, HTML renderings of the paper), so Figure 1 keeps what the abstract says: LIMA's answer
# "equivalent or strictly preferred" to three of the five baselines'. Claude's and Alpaca 65B's bars, and every
# bar of Figure 2 (GPT-4 as the judge), are left out rather than read off a picture.
PAPER_STUDIES: dict[str, Any] = {
    "pairwise": {
        "source": "arXiv 2305.11206, abstract and Figure 1 (300 test prompts, human preference)",
        "human": {"GPT-4": {"win_or_tie": 43.0}, "Bard": {"win_or_tie": 58.0}, "DaVinci003": {"win_or_tie": 65.0}},
        "automatic": {},  # Figure 2: no bar value in the text
    },
    # Section 4's analysis and Figure 3: 50 random test prompts, 50 % excellent and 6 of 50 failing (so 38 %
    # pass); the 20 out-of-distribution prompts apart.
    "absolute": {
        "source": "arXiv 2305.11206, section 4 (analysis) and Figure 3",
        "in_distribution": {"excellent": 50.0, "pass": 38.0, "fail": 12.0, "fails_per_ratings": "6 in 50"},
        "out_of_distribution": {"excellent": 45.0, "pass": 35.0, "fail": 20.0, "fails_per_ratings": "4 in 20"},
    },
    # Section 4's analysis, safety: 30 potentially sensitive prompts, 80 % answered safely; of the 10 with clearly
    # malicious intent, 6 safely.
    "safety": {
        "source": "arXiv 2305.11206, section 4 (analysis, safety)",
        "safe_share": 80.0,
        "safe_per_labels": "24 of 30",
        "malicious": {"safe_share": 60.0, "safe_per_labels": "6 of 10"},
    },
}
