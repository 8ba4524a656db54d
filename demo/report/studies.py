"""The prompt studies summed up (``studies_section``): LIMA's Figure 1 (pairwise preference against baselines),
Figure 3 (fail / pass / excellent, out-of-distribution prompts apart) and its safety study, from the records
``demo.studies`` yields (``demo.studies.records``) and nothing else.

Every record counts once, and people's ratings (``human``) and a model judge's (``automatic``) are counted apart,
never mixed. Intervals are the report's one bootstrap (``stats``), resampling *prompts*: the ratings of one prompt
(several raters, several baselines) are not independent.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from statistics import fmean
from typing import Any

import numpy as np

from demo.protocol import BEST_FIRST, RATINGS
from demo.report import preference
from demo.report.reading import ReportError
from demo.report.stats import LEVEL, level_intervals, pct, unit_intervals
from demo.studies.records import OUTCOMES, AbsoluteRating, Answer, PairwiseJudgment, SafetyLabel, Study

Record = PairwiseJudgment | AbsoluteRating | SafetyLabel | Answer | Study
KIND_OF = {PairwiseJudgment: "pairwise", AbsoluteRating: "absolute", SafetyLabel: "safety"}
SAFETY_LEVELS = ("safe", "unsafe")
INTERVALS = f"{LEVEL} % percentile bootstrap over prompts (scipy), seeded"


def studies_section(records: Iterable[Record], resamples: int = 2000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """The report's ``studies``: per study name, its ``kind`` and its ``human`` and ``automatic`` parts, with the
    answers generated for it. A study with answers but no rating yet is left out (it has no kind to report)."""
    rated: dict[str, list[Record]] = defaultdict(list)
    answers: dict[str, list[Answer]] = defaultdict(list)
    for record in records:
        if isinstance(record, Study):
            continue  # its definition: the ratings below say everything the figures need
        if isinstance(record, Answer):
            answers[record.study].append(record)
        elif type(record) in KIND_OF:
            rated[record.study].append(record)
        else:
            raise ReportError(f"a study record must be one of demo.studies.records, got {type(record).__name__}")
    result = {}
    for study in sorted(rated):
        kinds = sorted({KIND_OF[type(record)] for record in rated[study]})
        if len(kinds) > 1:
            raise ReportError(f"study {study!r} holds records of several kinds ({', '.join(kinds)}): one kind a study")
        count = COUNTERS[kinds[0]]
        result[study] = {
            "kind": kinds[0],
            "human": count([r for r in rated[study] if not r.automatic], resamples, seed),
            "automatic": count([r for r in rated[study] if r.automatic], resamples, seed),
            "answers": _answers(answers[study]),
            "agreement": agreement(rated[study]),
            "methods": METHODS[kinds[0]],
        }
    return result


def _item_and_label(record: Record) -> tuple[tuple[str, str], str]:
    """What a record rates (prompt and the source or baseline) and what it said of it, whatever the kind."""
    if isinstance(record, PairwiseJudgment):
        return (record.prompt_id, record.baseline), record.outcome
    if isinstance(record, AbsoluteRating):
        return (record.prompt_id, record.source), record.rating
    return (record.prompt_id, record.source), f"{'safe' if record.safe else 'unsafe'}, declined {record.declined}"


def agreement(records: list[Record]) -> dict[str, Any]:
    """How often the model judge said what people said, on the items both rated: every (person, judge) pair of
    labels of one item counts once (a pairwise item is one prompt against one baseline, the judge's label its two
    orders' verdict)."""
    people: dict[tuple[str, str], list[str]] = defaultdict(list)
    judge: dict[tuple[str, str], list[str]] = defaultdict(list)
    for record in records:
        item, label = _item_and_label(record)
        (judge if record.automatic else people)[item].append(label)
    both = sorted(set(people) & set(judge))
    pairs = [(mine, its) for item in both for mine in people[item] for its in judge[item]]
    same = sum(mine == its for mine, its in pairs)
    return {"items": len(both), "pairs": len(pairs), "agree": pct(same, len(pairs)) if pairs else None}


def _answers(answers: list[Answer]) -> dict[str, dict[str, Any]]:
    """How many answers each source has in the study, and their mean length in characters."""
    by_source: dict[str, list[int]] = defaultdict(list)
    for answer in answers:
        by_source[answer.source].append(len(answer.text))
    return {source: {"answers": len(chars), "chars": _mean(chars)} for source, chars in sorted(by_source.items())}


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return round(fmean(values), 1) if values else None


def _by_prompt(rows: list) -> list[list]:
    """The rows grouped by prompt, in the prompts' order (not the store's, so the same records always give the
    same resamples): the units every interval resamples."""
    groups: dict[str, list] = defaultdict(list)
    for row in rows:
        groups[row.prompt_id].append(row)
    return [groups[prompt] for prompt in sorted(groups)]


def _flatten(units: list[list]) -> tuple[list, np.ndarray]:
    """The rows of every unit in one list, and each row's unit: a unit's weight is then its rows' weight."""
    flat = [row for unit in units for row in unit]
    return flat, np.array([i for i, unit in enumerate(units) for _ in unit], dtype=int)


def _check(record: Record, field: str, allowed: tuple[str, ...]) -> None:
    value = getattr(record, field)
    if value not in allowed:
        raise ReportError(
            f"study {record.study!r}, prompt {record.prompt_id!r}: {field} {value!r} is not one of {', '.join(allowed)}"
        )


# -- Figure 1: pairwise ----------------------------------------------------------------------------------------
def _pairwise(rows: list[PairwiseJudgment], resamples: int, seed: int) -> dict[str, Any]:
    """One entry per baseline (per ``model vs baseline`` when the study has several studied models), and with
    three or more sources a Bradley–Terry ranking."""
    by_pair: dict[tuple[str, str], list[PairwiseJudgment]] = defaultdict(list)
    for row in rows:
        _check(row, "outcome", OUTCOMES)
        by_pair[row.model, row.baseline].append(row)
    models = {model for model, _ in by_pair}
    sources = sorted(models | {baseline for _, baseline in by_pair})
    per_baseline = {
        (baseline if len(models) == 1 else f"{model} vs {baseline}"): _against(model, baseline, mine, resamples, seed)
        for (model, baseline), mine in sorted(by_pair.items())
    }
    return {
        "judgments": len(rows),
        "prompts": len({row.prompt_id for row in rows}),
        "raters": len({row.rater for row in rows}),
        "per_baseline": per_baseline,
        "ranking": _ranking(sources, rows, resamples, seed) if len(sources) >= 3 else None,
    }


def _against(model: str, baseline: str, rows: list[PairwiseJudgment], resamples: int, seed: int) -> dict[str, Any]:
    """Figure 1's bar for one baseline: win / tie / loss shares from the model's side with their intervals, the
    answers' lengths, and the length-controlled preference with its interval."""
    counts = Counter(row.outcome for row in rows)
    units = _by_prompt(rows)
    per_prompt = [Counter(row.outcome for row in unit) for unit in units]
    flat, unit_of = _flatten(units)
    differences = [row.model_chars - row.baseline_chars for row in flat]

    def controlled(weights: np.ndarray) -> np.ndarray:
        return preference.length_controlled([row.outcome for row in flat], differences, weights[:, unit_of])[None]

    interval = unit_intervals(len(units), controlled, resamples, seed)
    return {
        "model": model,
        "baseline": baseline,
        "judgments": len(rows),
        "prompts": len(units),
        **{outcome: pct(counts[outcome], len(rows)) for outcome in OUTCOMES},
        "ci": level_intervals(per_prompt, OUTCOMES, resamples, seed),
        "win_or_tie": pct(counts["win"] + counts["tie"], len(rows)),  # the paper's "equivalent or better"
        "preference": round(100 * fmean(preference.SCORE[row.outcome] for row in rows), 1),  # a tie half a win
        "model_chars": _mean(row.model_chars for row in rows),
        "baseline_chars": _mean(row.baseline_chars for row in rows),
        "length_controlled": {
            "preference": round(float(controlled(np.ones((1, len(units))))[0, 0]), 1),
            "ci": interval[0] if interval else None,
        },
    }


def _ranking(sources: list[str], rows: list[PairwiseJudgment], resamples: int, seed: int) -> list[dict[str, Any]]:
    """Every source on one Bradley–Terry scale, best first, with bootstrap intervals over prompts."""

    units = _by_prompt(rows)
    flat, unit_of = _flatten(units)
    matches = [(row.model, row.baseline, row.outcome) for row in flat]

    def fit(weights: np.ndarray) -> np.ndarray:
        return preference.bradley_terry(sources, matches, weights[:, unit_of]).T

    scores, intervals = fit(np.ones((1, len(units))))[:, 0], unit_intervals(len(units), fit, resamples, seed)
    chars: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        chars[row.model].append(row.model_chars)
        chars[row.baseline].append(row.baseline_chars)
    ranking = [
        {
            "model": source,
            "score": round(float(scores[i]), 1),
            "interval": intervals[i] if intervals else None,
            "judgments": len(chars[source]),
            "chars": _mean(chars[source]),
        }
        for i, source in enumerate(sources)
    ]
    return sorted(ranking, key=lambda entry: (-entry["score"], entry["model"]))


# -- Figure 3: absolute ----------------------------------------------------------------------------------------
def _absolute(rows: list[AbsoluteRating], resamples: int, seed: int) -> dict[str, Any]:
    """Each source's fail / pass / excellent shares with intervals; out-of-distribution prompts apart, as the
    paper reports them (its 50 prompts, then its 20 out-of-distribution ones)."""
    for row in rows:
        _check(row, "rating", RATINGS)
    inside = [row for row in rows if not row.out_of_distribution]
    outside = [row for row in rows if row.out_of_distribution]
    return {**_rated(inside, resamples, seed), "out_of_distribution": _rated(outside, resamples, seed)}


def _rated(rows: list[AbsoluteRating], resamples: int, seed: int) -> dict[str, Any]:
    shares, intervals = {}, {}
    for source in sorted({row.source for row in rows}):
        mine = [row for row in rows if row.source == source]
        counts = Counter(row.rating for row in mine)
        units = _by_prompt(mine)
        shares[source] = {
            "ratings": len(mine),
            "prompts": len(units),
            **{level: pct(counts[level], len(mine)) for level in BEST_FIRST},
            "fails": counts["fail"],
            "fails_per_ratings": f"{counts['fail']} in {len(mine)}",
            "chars": _mean(row.chars for row in mine),
        }
        per_prompt = [Counter(row.rating for row in unit) for unit in units]
        intervals[source] = level_intervals(per_prompt, BEST_FIRST, resamples, seed)
    return {"ratings": len(rows), "shares": shares, "ci": intervals}


# -- safety ----------------------------------------------------------------------------------------------------
def _safety(rows: list[SafetyLabel], resamples: int, seed: int) -> dict[str, Any]:
    """Each source's safe share with its interval and declined share, and the same for the malicious prompts."""
    return {**_safe(rows, resamples, seed), "malicious": _safe([r for r in rows if r.malicious], resamples, seed)}


def _safe(rows: list[SafetyLabel], resamples: int, seed: int) -> dict[str, Any]:
    safe_share, intervals, declined, sources = {}, {}, {}, {}
    for source in sorted({row.source for row in rows}):
        mine = [row for row in rows if row.source == source]
        units = _by_prompt(mine)
        per_prompt = [Counter("safe" if row.safe else "unsafe" for row in unit) for unit in units]
        safe, refused = sum(row.safe for row in mine), sum(row.declined for row in mine)
        safe_share[source] = pct(safe, len(mine))
        intervals[source] = level_intervals(per_prompt, SAFETY_LEVELS, resamples, seed)["safe"]
        declined[source] = pct(refused, len(mine))
        sources[source] = {
            "labels": len(mine),
            "prompts": len(units),
            "safe": safe,
            "declined": refused,
            "safe_per_labels": f"{safe} of {len(mine)}",
            "chars": _mean(row.chars for row in mine),
        }
    return {
        "labels": len(rows),
        "safe_share": safe_share,
        "ci": intervals,
        "declined_share": declined,
        "sources": sources,
    }


COUNTERS: dict[str, Callable[[list, int, int], dict[str, Any]]] = {
    "pairwise": _pairwise,
    "absolute": _absolute,
    "safety": _safety,
}
METHODS = {
    "pairwise": {
        "intervals": INTERVALS,
        "length_control": preference.LENGTH_METHOD,
        "ranking": preference.RANKING_METHOD,
    },
    "absolute": {"intervals": INTERVALS},
    "safety": {"intervals": INTERVALS},
}
