"""bench/arena_crowd.py runs and prints its JSON line (the figures are the benchmark's, not asserted here)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_cli


def test_arena_crowd_benchmark_prints_its_json_line(trained: Path):
    result = run_cli("bench/arena_crowd.py", "--raters", "1,2", "--max-new-tokens", "8", "--pair", str(trained))
    assert result.returncode == 0, result.stderr[-2000:]
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert line["batched"] is True and line["pair"] == str(trained)
    for figures in (line, line["unbatched"]):
        for key in ("aggregate_tok_s", "turn_p95_s", "first_token_p95_s"):
            assert set(figures[key]) == {"1", "2"} and all(v > 0 for v in figures[key].values()), key
    assert line["ratio_2"] > 0
    # The tiny pair is too small to gain from bf16, so auto serves it in fp32: its fp32 run is the chosen one.
    assert line["precision"] == "fp32" and line["auto_vs_fp32"] == 1.0
    assert line["fp32"]["aggregate_tok_s"] == line["aggregate_tok_s"]
    assert line["targets"]["auto_vs_fp32"] == 1.4
