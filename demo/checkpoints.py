"""The Checkpoints tab: choose the epoch to serve as LIMA did, by reading the models' answers to the dev set.

LIMA kept epochs 5 to 10 and picked one by hand on 50 held-out prompts, since perplexity did not track
quality. ``python -m finetune dev RUN_DIR`` writes every kept epoch's answers to ``RUN_DIR/dev/epoch-N.jsonl``;
this tab (``python demo/app.py --checkpoints RUN_DIR``) shows one dev prompt at a time with two epochs' answers
side by side, blind (which epoch is A is drawn each time, and said only once both are rated), rated on the
arena's fail / pass / excellent scale. Each comparison is stored in the same database as a conversation of
purpose ``checkpoints`` (so it never counts toward the arena's report), its models named ``<run>/epoch-N``. A
per-epoch table sums up the ratings beside each epoch's stop-at-EOT rate and mean answer length, and a button
writes the run's ``selected`` (what the arena and the servers load).

RUN_DIR is a run (``runs/quick-cpu/lima-1030``) or a recipe folder holding both models (``runs/quick-cpu``).
"""

from __future__ import annotations

import json
import random
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from demo import arena, clients, protocol, ratings, results

EPOCH_FILE = re.compile(r"^epoch-(\d+)\.jsonl$")


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


# -- what the store holds ---------------------------------------------------------------------------------------
def _rows(store: ratings.Store, sql: str, args: tuple) -> list:
    from demo import report

    db = report.connect(store.path)  # read-only, beside the store's own writer
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def compared(store: ratings.Store, run: Run) -> list[tuple[str, str, str, str]]:
    """(session, prompt id, model A, model B) of every stored comparison of this run's epochs."""
    rows = _rows(
        store,
        "SELECT session, opener_id, model_a, model_b FROM conversations WHERE purpose = 'checkpoints'"
        " AND model_a LIKE ? ESCAPE '\\'",
        (run.name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/epoch-%",),
    )
    return [tuple(row) for row in rows]


def table(store: ratings.Store, run: Run) -> list[dict]:
    """Per epoch: its ratings on this scale, and its answers' stop-at-EOT rate and mean length."""
    rows = _rows(
        store,
        "SELECT t.model, r.rating FROM ratings r JOIN turns t ON t.id = r.turn_id JOIN conversations c"
        " ON c.id = t.conversation_id WHERE c.purpose = 'checkpoints' AND r.by_owner = 1",
        (),
    )
    by_model: dict[str, Counter] = {}
    for model, rating in rows:
        by_model.setdefault(model, Counter())[rating] += 1
    selected = run.selected()
    out = []
    for epoch in run.epochs():
        counts = by_model.get(run.label(epoch), Counter())
        rated = sum(counts.values())
        answers = list(run.answers[epoch].values())
        stops = [a["stopped_at_eot"] for a in answers if "stopped_at_eot" in a]
        tokens = [a["tokens"] for a in answers if isinstance(a.get("tokens"), int)]
        out.append(
            {
                "epoch": epoch,
                "rated": rated,
                **{name: round(100 * counts[name] / rated, 1) if rated else None for name in protocol.RATINGS},
                "stopped_at_eot": round(100 * sum(stops) / len(stops), 1) if stops else None,
                "mean_tokens": round(sum(tokens) / len(tokens), 1) if tokens else None,
                "answers": len(answers),
                "selected": selected == f"epoch-{epoch}",
            }
        )
    return out


def draw(store: ratings.Store, run: Run, session: str, rng: random.Random) -> tuple[str, int, int] | None:
    """The next comparison for this session: the pair of epochs compared least so far (by anyone), on a prompt
    this session has not compared for that pair; which epoch is A is drawn. None when all are done."""
    done = compared(store, run)
    pairs_count = Counter(tuple(sorted((a, b))) for _, _, a, b in done)
    mine = {(pid, *sorted((a, b))) for s, pid, a, b in done if s == session}
    epochs = run.epochs()
    pairs = [(a, b) for i, a in enumerate(epochs) for b in epochs[i + 1 :]]
    rng.shuffle(pairs)
    pairs.sort(key=lambda p: pairs_count[tuple(sorted((run.label(p[0]), run.label(p[1]))))])
    for a, b in pairs:
        labels = sorted((run.label(a), run.label(b)))
        left = [pid for pid in run.shared_prompts(a, b) if (pid, *labels) not in mine]
        if left:
            first, second = (a, b) if rng.random() < 0.5 else (b, a)
            return rng.choice(left), first, second
    return None


def record(
    store: ratings.Store, run: Run, session: str, rater: str, prompt_id: str, epochs: tuple[int, int], rated: tuple
) -> str:
    """Store one comparison (a conversation of two one-turn sides) with its two ratings; its id."""
    conversation_id = uuid.uuid4().hex
    store.ensure_conversation(
        conversation_id,
        session,
        run.label(epochs[0]),
        run.label(epochs[1]),
        blind=True,
        rater=rater,
        opener_id=prompt_id,
        purpose="checkpoints",
    )
    for side, epoch, rating in zip(protocol.SIDES, epochs, rated, strict=True):
        answer = run.answers[epoch][prompt_id]
        turn = store.add_turn(
            conversation_id,
            session,
            side,
            1,
            run.label(epoch),
            answer["prompt"],
            answer["answer"],
            {"dev": answer.get("decoding", {}), "source": answer.get("source")},
            started_at=time.time(),  # shown now; the answer itself was generated by finetune dev
            first_token_s=None,
        )
        store.rate(turn.id, rating, session, rater)
    return conversation_id


# -- the tab ----------------------------------------------------------------------------------------------------
def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


class Tab:
    """The tab's context (the store, the runs by name), its components (made by ``layout``) and its handlers."""

    def __init__(self, store: ratings.Store, runs: list[Run], admin: results.Admin | None = None) -> None:
        self.store, self.by_name = store, {run.name: run for run in runs}
        self.admin = admin or results.Admin(token=None, public=False)

    def run(self, name: object) -> Run:
        if not isinstance(name, str) or name not in self.by_name:
            raise gr.Error("No such model in this tab.")
        return self.by_name[name]

    def layout(self, rater: gr.Textbox, token_box: gr.Textbox | None = None) -> None:
        """The components, inside the caller's ``gr.Tab``: layout only."""
        self.rater, self.shown = rater, gr.State(None)
        self.token_box = token_box or gr.Textbox(visible=False)  # (run name, prompt id, epoch A, epoch B) on screen
        gr.Markdown(
            "Read one dev prompt and two epochs' answers, blind, and rate each as in the arena. The table sums up "
            "every epoch; **Serve this epoch** writes the run's `selected`, which the arena and the servers load."
        )
        with gr.Row():
            names = list(self.by_name)
            self.which = gr.Dropdown(names, value=names[0], label="Model", elem_id="ckpt-run")
            self.next_btn = gr.Button("Next prompt", variant="primary", elem_id="ckpt-next")
        self.prompt = gr.Markdown(elem_id="ckpt-prompt")
        self.answers, self.ratings = {}, {}
        with gr.Row(equal_height=False):
            for side in protocol.SIDES:
                with gr.Column():
                    self.answers[side] = gr.Markdown(elem_id=f"ckpt-answer-{side}")
                    self.ratings[side] = gr.Radio(
                        list(protocol.RATINGS),
                        label=f"Answer {side.upper()}",
                        elem_id=f"ckpt-rate-{side}",
                        info=protocol.RATING_HELP,
                    )
        self.save_btn = gr.Button("Save both ratings", elem_id="ckpt-save", interactive=False)
        self.note = gr.Markdown(elem_id="ckpt-note")
        shares = [f"{name} %" for name in protocol.BEST_FIRST]
        self.summary = gr.Dataframe(
            headers=["epoch", "rated", *shares, "stops at EOT %", "mean tokens", "served"],
            interactive=False,
            elem_id="ckpt-table",
        )
        with gr.Row():
            self.epoch_box = gr.Dropdown(choices=[], label="Epoch", elem_id="ckpt-epoch")
            self.select_btn = gr.Button("Serve this epoch", elem_id="ckpt-select")

    def wire(self) -> None:
        private = {"api_visibility": "private"}
        shown = [self.shown, self.prompt, *self.answers.values(), *self.ratings.values(), self.save_btn, self.note]
        self.next_btn.click(self.next_prompt, inputs=[self.which], outputs=shown, **private)
        table = [self.summary, self.epoch_box]
        saved = [self.shown, self.save_btn, self.note, *table]
        inputs = [self.shown, *self.ratings.values(), self.rater]
        self.save_btn.click(self.save, inputs=inputs, outputs=saved, **private)
        self.which.change(self.refresh, inputs=[self.which], outputs=table, **private)
        serve_inputs = [self.which, self.epoch_box, self.token_box]
        self.select_btn.click(self.serve, inputs=serve_inputs, outputs=[self.note, *table], **private)

    # -- handlers --------------------------------------------------------------------------------------------
    def rows(self, run: Run) -> list[list]:
        return [
            [
                f"epoch-{row['epoch']}",
                row["rated"],
                *(_pct(row[key]) for key in (*protocol.BEST_FIRST, "stopped_at_eot")),
                "" if row["mean_tokens"] is None else row["mean_tokens"],
                "✓" if row["selected"] else "",
            ]
            for row in table(self.store, run)
        ]

    def refresh(self, name: str) -> tuple:
        """The table and the epochs to serve (a positional pair: the page's load event uses it too)."""
        run = self.run(name)
        epochs = [f"epoch-{e}" for e in run.epochs()]
        return self.rows(run), gr.update(choices=epochs, value=run.selected() if run.selected() in epochs else None)

    def next_prompt(self, name: str, request: gr.Request) -> dict:
        run = self.run(name)
        picked = draw(self.store, run, clients.session(request), random.Random())
        cleared = {radio: gr.update(value=None) for radio in self.ratings.values()}
        if picked is None:
            done = "You have compared every pair of epochs on every dev prompt of this model."
            empty = {self.prompt: "", **{answer: "" for answer in self.answers.values()}}
            return {self.shown: None, **empty, **cleared, self.save_btn: gr.update(interactive=False), self.note: done}
        pid, a, b = picked
        said = {
            self.answers[side]: f"**Answer {side.upper()}**\n\n{arena.safe_markdown(run.answers[epoch][pid]['answer'])}"
            for side, epoch in zip(protocol.SIDES, (a, b), strict=True)
        }
        prompt = f"**Dev prompt `{pid}`**\n\n{arena.safe_markdown(run.answers[a][pid]['prompt'])}"
        return {
            self.shown: (name, pid, a, b),
            self.prompt: prompt,
            **said,
            **cleared,
            self.save_btn: gr.update(interactive=True),
            self.note: "",
        }

    def save(self, current, first: str | None, second: str | None, rater_name: str, request: gr.Request) -> tuple:
        if current is None:
            raise gr.Error("Press Next prompt first.")
        if first not in protocol.RATINGS or second not in protocol.RATINGS:
            raise gr.Error("Rate both answers first.")
        name, pid, a, b = current
        session, rater = clients.session(request), clients.rater(rater_name, request)
        record(self.store, self.run(name), session, rater, pid, (a, b), (first, second))
        told = f"Saved. A was epoch {a}, B was epoch {b}. Press Next prompt for another."
        return None, gr.update(interactive=False), told, *self.refresh(name)

    def serve(self, name: str, epoch: str | None, token: str | None, request: gr.Request) -> tuple:
        """Write the run's ``selected``: what the arena and the servers load after a restart, so from a request
        that came from the public only with the admin token."""
        from serving.folder import FolderError, select

        if self.admin.gate.is_public(request) and not self.admin.allows(token, request):
            raise gr.Error("Serving another epoch needs the admin token.")
        run = self.run(name)
        if not epoch:
            raise gr.Error("Choose an epoch first.")
        if not isinstance(epoch, str) or not re.fullmatch(r"epoch-\d{1,4}", epoch):
            raise gr.Error("No such epoch.")
        try:
            select(run.path, int(epoch.removeprefix("epoch-")))
        except FolderError as err:
            raise gr.Error(str(err).removeprefix("error: ")) from None
        return f"{name} now serves {epoch} (restart the arena or the servers to load it).", *self.refresh(name)


def layout(
    store: ratings.Store,
    runs: list[Run],
    rater: gr.Textbox,
    admin: results.Admin | None = None,
    token_box: gr.Textbox | None = None,
) -> tuple:
    """The tab inside the caller's ``gr.Tab``; returns what the page's load event needs to fill the table:
    the refresh handler, and its input and outputs. ``admin``/``token_box``: who may serve another epoch."""
    tab = Tab(store, runs, admin)
    tab.layout(rater, token_box)
    tab.wire()
    return tab.refresh, tab.which, tab.summary, tab.epoch_box
