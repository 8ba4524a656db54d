"""The Checkpoints tab: choose the epoch to serve as LIMA did, by reading the models' answers to the dev set.

LIMA kept epochs 5 to 10 and picked one by hand on 50 held-out prompts, since perplexity did not track
quality. ``python -m finetune dev RUN_DIR`` writes every kept epoch's answers to ``RUN_DIR/dev/epoch-N.jsonl``;
this tab (``python demo/app.py --checkpoints RUN_DIR``) is one use of the pairwise prompt study (``demo.studies``):
each run's dev answers are stored as the answers of a study of its own, ``checkpoints:<run>``, whose sources are
its epochs (``<run>/epoch-N``) and whose pairs are all pairs of epochs (``store.ALL_PAIRS``), handed out evenly.
The tab is the Studies tab's page for those studies (blind order drawn and stored by the server, "A is better /
Tie / B is better"), so nothing of it reaches the arena's Figure 7. A per-epoch table sums up the people's
judgments (wins, ties, losses; with three epochs or more judged, a Bradley–Terry score with its interval) beside
each epoch's stop-at-EOT rate and mean answer length, and a button writes the run's ``selected`` (what the arena
and the servers load). Comparisons stored by earlier versions (conversations of purpose ``checkpoints``, rated on
the fail / pass / excellent scale) stay in the database and are counted in the table's last column.

RUN_DIR is a run (``runs/quick-cpu/lima-1030``) or a recipe folder holding both models (``runs/quick-cpu``).
This module is the runs, their answers and the table, without Gradio (``python -m demo.judge`` uses them and starts
in a second); the tab's page is ``demo.checkpoints_tab``.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from demo import ratings
from demo.report.studies import studies_section
from demo.studies import store as studies
from demo.studies.records import OUTCOMES, PairwiseJudgment, Study

EPOCH_FILE = re.compile(r"^epoch-(\d+)\.jsonl$")
EPOCH_DIR = re.compile(r"^epoch-(\d+)$")
STUDY_PREFIX = "checkpoints:"  # a run's study is named checkpoints:<run>
RESAMPLES = 500  # the table's bootstrap: enough for an interval read on screen, quick on every refresh


class CheckpointError(Exception):
    """A run folder or dev answers file that cannot be used; one line, naming the file (and line)."""


@dataclass
class Run:
    """One model's run folder and its epochs' dev answers: ``answers[epoch][prompt id]``."""

    path: Path
    answers: dict[int, dict[str, dict]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    def label(self, epoch: int) -> str:
        return f"{self.name}/epoch-{epoch}"

    def epochs(self) -> list[int]:
        return sorted(self.answers)

    def shared_prompts(self, a: int, b: int) -> list[str]:
        """Prompt ids both epochs answered, in the dev file's order."""
        return [pid for pid in self.answers[a] if pid in self.answers[b]]

    def kept(self) -> list[int]:
        """Every epoch of the run: a saved folder or dev answers (the study's sources, known before dev is done)."""
        folders = (EPOCH_DIR.match(p.name) for p in self.path.iterdir() if p.is_dir())
        return sorted({int(m.group(1)) for m in folders if m} | set(self.answers))

    def selected(self) -> str | None:
        marker = self.path / "selected"
        return marker.read_text(encoding="utf-8").strip() if marker.is_file() else None


def load_run(path: Path) -> Run:
    run = Run(path)
    for file in sorted((path / "dev").glob("epoch-*.jsonl")):
        match = EPOCH_FILE.match(file.name)
        if not match:
            continue
        answers: dict[str, dict] = {}
        lines = file.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):
                    continue  # a torn last line (finetune dev was stopped): it will be redone
                raise CheckpointError(f"{file}:{number}: not JSON") from None
            for key in ("id", "prompt", "answer"):
                if key not in record:
                    raise CheckpointError(f"{file}:{number}: no {key!r}")
            answers[str(record["id"])] = record
        if answers:
            run.answers[int(match.group(1))] = answers
    return run


def find_runs(path: str | Path) -> list[Run]:
    """The runs under ``path`` (itself, or its model folders) that hold dev answers of two epochs or more."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"--checkpoints {path}: no such folder")
    candidates = [path] if (path / "dev").is_dir() else sorted(p for p in path.iterdir() if (p / "dev").is_dir())
    runs = [run for run in map(load_run, candidates) if len(run.epochs()) >= 2]
    if not runs:
        raise CheckpointError(
            f"--checkpoints {path}: no dev answers of two epochs or more: run python -m finetune dev {path} first"
        )
    return runs


# -- the run's study -------------------------------------------------------------------------------------------
def _define(store: ratings.Store, run: Run) -> str:
    """Define the run's study (once) and name it: ``checkpoints:<run>``, or, when that name is stored with other
    epochs or another decoding (a run trained again into the same folder), a name that adds the epochs."""
    first = next(iter(run.answers[run.epochs()[0]].values()))
    sources = tuple(run.label(epoch) for epoch in run.kept())
    names = (f"{STUDY_PREFIX}{run.name}", f"{STUDY_PREFIX}{run.name}@{','.join(map(str, run.kept()))}")
    for name in names:
        try:
            studies.define(
                store, Study(name, "pairwise", studies.ALL_PAIRS, sources), first.get("decoding", {}), str(run.path)
            )
            return name
        except ratings.NotAllowed:
            continue
    raise CheckpointError(f"--checkpoints {run.path}: {names[-1]!r} is stored with other epochs or decoding")


def store_answers(store: ratings.Store, run: Run) -> str:
    """Store every dev answer of the run as its study's answer (a rerun stores nothing twice); the study's name."""
    name = _define(store, run)
    stored = studies.stored_answers(store, name)
    for epoch in run.epochs():
        for pid, answer in run.answers[epoch].items():
            if (pid, run.label(epoch)) in stored:
                continue
            prompt = {"id": pid, "prompt": answer["prompt"]}
            # generated by finetune dev, before anyone came: its time is not known, only how long it took
            timing = {"decoding": answer.get("decoding", {}), "started_at": time.time(), "first_token_s": None}
            studies.add_answer(store, name, prompt, run.label(epoch), answer["answer"], timing)
    return name


def other_studies(store: ratings.Store) -> dict[str, str]:
    """The stored studies that are no run's epochs, by name: those the Studies tab offers (this tab the others)."""
    return {one.name: one.name for one in studies.studies(store) if not one.name.startswith(STUDY_PREFIX)}


# -- what the store holds ---------------------------------------------------------------------------------------
def _legacy(store: ratings.Store) -> dict[str, Counter]:
    """Ratings of the earlier tab (conversations of purpose ``checkpoints``), per ``<run>/epoch-N``."""
    from demo import report

    db = report.connect(store.path)  # read-only, beside the store's own writer
    try:
        rows = db.execute(
            "SELECT t.model, r.rating FROM ratings r JOIN turns t ON t.id = r.turn_id JOIN conversations c"
            " ON c.id = t.conversation_id WHERE c.purpose = 'checkpoints' AND r.by_owner = 1"
        ).fetchall()
    finally:
        db.close()
    by_model: dict[str, Counter] = {}
    for model, rating in rows:
        by_model.setdefault(model, Counter())[rating] += 1
    return by_model


def _judged(records: list) -> dict[str, Counter]:
    """Per source: its people's wins, ties and losses (each judgment counts for both epochs it compared)."""
    counts: dict[str, Counter] = {}
    for record in records:
        if isinstance(record, PairwiseJudgment) and not record.automatic:
            counts.setdefault(record.model, Counter())[record.outcome] += 1
            counts.setdefault(record.baseline, Counter())[OUTCOMES[2 - OUTCOMES.index(record.outcome)]] += 1
    return counts


def table(store: ratings.Store, run: Run, name: str) -> list[dict]:
    """Per epoch: people's judgments (wins, ties, losses; a Bradley–Terry score and interval once three epochs
    or more are judged), its answers' stop-at-EOT rate and mean length, and the earlier tab's ratings."""
    records = list(studies.records(store, name))
    judged = _judged(records)
    human = studies_section(records, resamples=RESAMPLES).get(name, {}).get("human") or {}
    ranked = {entry["model"]: entry for entry in human.get("ranking") or ()}
    legacy, selected = _legacy(store), run.selected()
    out = []
    for epoch in run.epochs():
        label, answers = run.label(epoch), list(run.answers[epoch].values())
        stops = [a["stopped_at_eot"] for a in answers if "stopped_at_eot" in a]
        tokens = [a["tokens"] for a in answers if isinstance(a.get("tokens"), int)]
        out.append(
            {
                "epoch": epoch,
                "score": ranked.get(label, {}).get("score"),
                "interval": ranked.get(label, {}).get("interval"),
                **{outcome: judged.get(label, Counter())[outcome] for outcome in OUTCOMES},
                "stopped_at_eot": round(100 * sum(stops) / len(stops), 1) if stops else None,
                "mean_tokens": round(sum(tokens) / len(tokens), 1) if tokens else None,
                "answers": len(answers),
                "legacy": dict(legacy.get(label, Counter())),
                "selected": selected == f"epoch-{epoch}",
            }
        )
    return out
