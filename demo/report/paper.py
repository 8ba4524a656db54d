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
