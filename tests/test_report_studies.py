"""The report's prompt studies (issue 21): Figure 1's pairwise shares, Figure 3's absolute shares, the safety share,
the length-controlled preference and the Bradley–Terry ranking, counted from hand-built record lists whose answers
are worked out below; and every registered figure drawn from a report that holds them."""

from __future__ import annotations

from pathlib import Path

import pytest

from demo.ratings import Store
from demo.report import FIGURES, ReportError, build_report, markdown, studies_section, study_rows, write_figures
from demo.report.preference import bradley_terry, length_controlled
from demo.studies.records import AbsoluteRating, Answer, PairwiseJudgment, SafetyLabel

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RESAMPLES = 200  # enough for ordered intervals, fast enough for the suite
JUDGE = "judge:scripted"


def pairwise(prompt: int, outcome: str, baseline: str = "base", automatic: bool = False, model: str = "lima",
             chars: tuple[int, int] = (100, 100), study: str = "fig1") -> PairwiseJudgment:  # fmt: skip
    rater = JUDGE if automatic else "ann"
    return PairwiseJudgment(study, f"p{prompt}", model, baseline, outcome, rater, automatic, *chars)


def absolute(prompt: int, rating: str, ood: bool = False, automatic: bool = False) -> AbsoluteRating:
    return AbsoluteRating("fig3", f"p{prompt}", "lima", rating, ood, JUDGE if automatic else "ann", automatic, 250)


def label(prompt: int, safe: bool, declined: bool, malicious: bool, automatic: bool = False) -> SafetyLabel:
    rater = JUDGE if automatic else "ann"
    return SafetyLabel("safety", f"s{prompt}", "lima", safe, declined, malicious, rater, automatic, 80)


def outcomes(*counts: tuple[str, int], start: int = 0, **kwargs) -> list[PairwiseJudgment]:
    """One judgment per prompt: ``("win", 5), ("tie", 3)`` -> five prompts won, then three tied."""
    said = [outcome for outcome, n in counts for _ in range(n)]
    return [pairwise(start + i, outcome, **kwargs) for i, outcome in enumerate(said)]


# People: against "base" 5 wins, 3 ties, 2 losses of 10 -> 50 / 30 / 20; against "other" 1 win, 3 losses -> 25 / 0 /
# 75. The judge: 4 losses against "base" -> 0 / 0 / 100, which must move none of the people's numbers.
PAIRWISE = [
    *outcomes(("win", 5), ("tie", 3), ("loss", 2)),
    *outcomes(("win", 1), ("loss", 3), baseline="other"),
    *outcomes(("loss", 4), automatic=True),
]
# Figure 3, people: in distribution E5 P4 F1 of 10 -> 50 / 40 / 10, "1 in 10"; out of distribution F3 P1 of 4 ->
# 0 / 25 / 75. The judge: 2 excellent in distribution -> 100 / 0 / 0.
ABSOLUTE = [
    *(absolute(i, rating) for i, rating in enumerate(["excellent"] * 5 + ["pass"] * 4 + ["fail"])),
    *(absolute(10 + i, rating, ood=True) for i, rating in enumerate(["fail"] * 3 + ["pass"])),
    absolute(0, "excellent", automatic=True),
    absolute(1, "excellent", automatic=True),
]
# Safety, people: 10 prompts, 8 safe (80 %), 4 declined (40 %); the first 5 malicious, 3 of them safe (60 %).
SAFETY = [label(i, safe=i not in (0, 1), declined=i < 4, malicious=i < 5) for i in range(10)]


@pytest.fixture(scope="module")
def studies() -> dict:
    answers = [Answer("fig1", "p0", "lima", "x" * 120), Answer("fig1", "p0", "base", "y" * 80)]
    return studies_section([*PAIRWISE, *ABSOLUTE, *SAFETY, *answers], resamples=RESAMPLES, seed=0)


def ordered(interval: list[float], share: float) -> bool:
    return interval is not None and interval[0] <= share <= interval[1]


def test_the_json_keys(studies):
    assert set(studies) == {"fig1", "fig3", "safety"}
    for name, kind in (("fig1", "pairwise"), ("fig3", "absolute"), ("safety", "safety")):
        assert studies[name]["kind"] == kind
        assert {"kind", "human", "automatic"} <= set(studies[name])
    human = studies["fig1"]["human"]
    assert {"per_baseline", "ranking"} <= set(human)
    entry = human["per_baseline"]["base"]
    assert {"win", "tie", "loss", "ci", "model_chars", "baseline_chars", "length_controlled"} <= set(entry)
    assert set(entry["ci"]) == {"win", "tie", "loss"}
    assert {"shares", "ci", "out_of_distribution"} <= set(studies["fig3"]["human"])
    assert {"shares", "ci"} <= set(studies["fig3"]["human"]["out_of_distribution"])
    assert {"safe_share", "ci", "malicious", "declined_share"} <= set(studies["safety"]["human"])
    assert studies["fig1"]["answers"] == {"base": {"answers": 1, "chars": 80.0}, "lima": {"answers": 1, "chars": 120.0}}


def test_pairwise_shares_per_baseline_with_ordered_intervals(studies):
    human = studies["fig1"]["human"]
    base, other = human["per_baseline"]["base"], human["per_baseline"]["other"]
    assert (base["win"], base["tie"], base["loss"], base["judgments"]) == (50.0, 30.0, 20.0, 10)
    assert (base["win_or_tie"], base["preference"]) == (80.0, 65.0)
    assert (other["win"], other["tie"], other["loss"]) == (25.0, 0.0, 75.0)
    for outcome in ("win", "tie", "loss"):
        assert ordered(base["ci"][outcome], base[outcome])
    assert (base["model_chars"], base["baseline_chars"]) == (100.0, 100.0)


def test_human_and_automatic_apart(studies):
    auto = studies["fig1"]["automatic"]
    assert list(auto["per_baseline"]) == ["base"]
    assert (auto["per_baseline"]["base"]["loss"], auto["judgments"]) == (100.0, 4)
    assert studies["fig1"]["human"]["judgments"] == 14
    assert studies["fig3"]["automatic"]["shares"]["lima"]["excellent"] == 100.0
    assert studies["fig3"]["human"]["shares"]["lima"]["ratings"] == 10
    assert studies["safety"]["automatic"]["labels"] == 0


def test_absolute_shares_with_out_of_distribution_apart(studies):
    part = studies["fig3"]["human"]
    inside, outside = part["shares"]["lima"], part["out_of_distribution"]["shares"]["lima"]
    assert (inside["excellent"], inside["pass"], inside["fail"], inside["fails_per_ratings"]) == (
        50.0,
        40.0,
        10.0,
        "1 in 10",
    )
    assert (outside["excellent"], outside["pass"], outside["fail"], outside["ratings"]) == (0.0, 25.0, 75.0, 4)
    assert inside["chars"] == 250.0
    for level in ("excellent", "pass", "fail"):
        assert ordered(part["ci"]["lima"][level], inside[level])
        assert ordered(part["out_of_distribution"]["ci"]["lima"][level], outside[level])


def test_safety_share_malicious_and_declined(studies):
    part = studies["safety"]["human"]
    assert (part["safe_share"]["lima"], part["declined_share"]["lima"]) == (80.0, 40.0)
    assert ordered(part["ci"]["lima"], 80.0)
    assert (part["malicious"]["safe_share"]["lima"], part["malicious"]["labels"]) == (60.0, 5)
    assert part["sources"]["lima"]["safe_per_labels"] == "8 of 10"


def test_length_control_on_a_case_with_a_known_answer():
    # The longer answer wins 3 times in 4 and the shorter 1 in 4, whichever model wrote it: length alone decides.
    # The model is longer in 40 judgments and shorter in 20, so its raw preference is (30 + 5) / 60 = 58.3 %; with
    # two length differences (+d and -d) the fit is saturated and its intercept is (logit .75 + logit .25) / 2 = 0:
    # at no length difference, 50 %.
    said = ["win"] * 30 + ["loss"] * 10 + ["win"] * 5 + ["loss"] * 15
    differences = [100] * 40 + [-100] * 20
    assert length_controlled(said, differences, [[1.0] * 60])[0] == pytest.approx(50.0, abs=0.2)
    # With no length difference at all, the controlled preference is the raw one: 7 of 10.
    assert length_controlled(["win"] * 7 + ["loss"] * 3, [0] * 10, [[1.0] * 10])[0] == pytest.approx(70.0, abs=0.2)
    # Through the section: the same judgments, each on its own prompt.
    lengths = [(300, 200)] * 40 + [(200, 300)] * 20
    records = [pairwise(i, outcome, chars=chars) for i, (outcome, chars) in enumerate(zip(said, lengths, strict=True))]
    entry = studies_section(records, resamples=RESAMPLES)["fig1"]["human"]["per_baseline"]["base"]
    assert entry["preference"] == 58.3
    assert entry["length_controlled"]["preference"] == pytest.approx(50.0, abs=0.2)
    assert ordered(entry["length_controlled"]["ci"], entry["length_controlled"]["preference"])


def test_bradley_terry_ranks_three_sources_in_their_known_order():
    # a beats b 8-2, b beats c 8-2, a beats c 9-1, each judgment on its own prompt.
    records = [
        *outcomes(("win", 8), ("loss", 2), model="a", baseline="b"),
        *outcomes(("win", 8), ("loss", 2), model="b", baseline="c", start=10),
        *outcomes(("win", 9), ("loss", 1), model="a", baseline="c", start=20),
    ]
    human = studies_section(records, resamples=RESAMPLES)["fig1"]["human"]
    ranking = human["ranking"]
    assert [entry["model"] for entry in ranking] == ["a", "b", "c"]
    assert all(ordered(entry["interval"], entry["score"]) for entry in ranking)
    assert [entry["judgments"] for entry in ranking] == [20, 20, 20]
    assert set(human["per_baseline"]) == {"a vs b", "a vs c", "b vs c"}  # several studied models: named pairs
    # The scores are the fit's own (centred on 1000), not a rescaled rank.
    scores = bradley_terry(["a", "b", "c"], [(r.model, r.baseline, r.outcome) for r in records], [[1.0] * 30])[0]
    assert scores.mean() == pytest.approx(1000.0)
    assert [entry["score"] for entry in ranking] == [round(float(s), 1) for s in scores]


def test_two_sources_have_no_ranking(studies):
    assert studies["fig1"]["automatic"]["ranking"] is None  # lima and base only


def test_the_same_records_and_seed_give_the_same_section():
    records = [*PAIRWISE, *ABSOLUTE]
    assert studies_section(records, resamples=50, seed=3) == studies_section(list(reversed(records)), 50, 3)


@pytest.mark.parametrize(
    ("record", "named"),
    [
        (pairwise(1, "better"), "outcome 'better'"),
        (absolute(1, "great"), "rating 'great'"),
    ],
)
def test_a_bad_record_is_one_line_naming_its_study_prompt_and_field(record, named):
    with pytest.raises(ReportError, match=f"prompt 'p1': {named}"):
        studies_section([record], resamples=10)


def test_the_report_carries_the_studies_and_draws_every_figure(tmp_path: Path):
    db = tmp_path / "ratings.db"
    Store(db).close()  # a real, empty arena database: the studies come beside it
    report = build_report(db, resamples=RESAMPLES, studies=[*PAIRWISE, *ABSOLUTE, *SAFETY])
    assert report["studies"]["fig1"]["human"]["per_baseline"]["base"]["win"] == 50.0
    assert build_report(db, resamples=RESAMPLES)["studies"] == {}
    drawn = write_figures(report, tmp_path / "out")
    assert set(drawn) == {entry.name for entry in FIGURES} >= {"figure7", "figure7_automatic", "figure1", "figure3"}
    for entry in FIGURES:
        path = tmp_path / "out" / entry.file
        assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 10_000
    summary = markdown(report)
    assert "## Prompt studies" in summary and "| lima vs base | 10 | 50.0 %" in summary
    assert "| LIMA (paper) | 30 | 80.0 % |" in summary


def test_figures_without_studies_draw_the_papers_bars_alone(tmp_path: Path):
    db = tmp_path / "ratings.db"
    Store(db).close()
    report = build_report(db, resamples=RESAMPLES)
    for entry in FIGURES:
        assert entry.draw(report, tmp_path / entry.file).read_bytes()[:8] == PNG_MAGIC
    assert "Prompt studies" not in markdown(report)


def test_study_rows_carry_each_rating_with_the_answers_rated():
    answers = [Answer("fig1", "p0", "lima", "long answer"), Answer("fig1", "p0", "base", "short")]
    rows = study_rows([*answers, PAIRWISE[0], ABSOLUTE[0], SAFETY[0]])
    assert [row["kind"] for row in rows] == ["pairwise", "absolute", "safety"]
    assert (rows[0]["outcome"], rows[0]["model_answer"], rows[0]["baseline_answer"]) == ("win", "long answer", "short")
    assert (rows[1]["rating"], rows[1]["answer"], rows[1]["automatic"]) == ("excellent", None, False)
    assert (rows[2]["safe"], rows[2]["malicious"], rows[2]["prompt_id"]) == (False, True, "s0")


def test_the_judge_s_agreement_with_people_on_the_items_both_rated():
    people = [pairwise(1, "win"), pairwise(2, "loss"), pairwise(3, "tie"), pairwise(9, "win")]
    judge = [pairwise(1, "win", automatic=True), pairwise(2, "tie", automatic=True), pairwise(3, "tie", automatic=True)]
    judge += [pairwise(4, "win", automatic=True)]  # rated by the judge alone: not compared
    section = studies_section(people + judge, resamples=50)
    assert section["fig1"]["agreement"] == {"items": 3, "pairs": 3, "agree": 66.7}
    ratings = [label(1, True, True, False), label(1, True, False, False, automatic=True)]
    assert studies_section(ratings, resamples=50)["safety"]["agreement"] == {"items": 1, "pairs": 1, "agree": 0.0}
    assert studies_section([absolute(1, "pass")], resamples=50)["fig3"]["agreement"]["agree"] is None
