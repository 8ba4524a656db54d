"""The Checkpoints tab's page (``demo.checkpoints``: the runs, their study and the table): the Studies tab's rating
page for each run's study, the per-epoch table, and **Serve this epoch**."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import gradio as gr

from demo import protocol, ratings
from demo.checkpoints import Run, store_answers, table
from demo.studies.records import OUTCOMES
from demo.studies.ui import StudiesTab

if TYPE_CHECKING:
    from demo.ui import ArenaTab


def _cell(row: dict) -> list:
    interval = row["interval"]
    score = "" if row["score"] is None else f"{row['score']:.0f}"
    if score and interval:
        score += f" [{interval[0]:.0f}, {interval[1]:.0f}]"
    legacy = ", ".join(f"{row['legacy'][level]} {level}" for level in protocol.BEST_FIRST if row["legacy"].get(level))
    return [
        f"epoch-{row['epoch']}",
        score,
        *(row[outcome] for outcome in OUTCOMES),
        "" if row["stopped_at_eot"] is None else f"{row['stopped_at_eot']:.1f}",
        "" if row["mean_tokens"] is None else row["mean_tokens"],
        legacy,
        "✓" if row["selected"] else "",
    ]


class Tab:
    """The tab's context (the store, each run by its study's name), its components and its handlers: the rating
    page is the Studies tab's (``StudiesTab``, its ids prefixed ``ckpt``), the table and Serve are this tab's."""

    def __init__(self, store: ratings.Store, runs: list[Run], page: ArenaTab) -> None:
        self.store, self.admin = store, page.admin
        self.by_study = {store_answers(store, run): run for run in runs}
        # the picker shows each run's name, as the tab did before studies; its study is named by the handlers
        self.study = StudiesTab(store, page, {run.name: name for name, run in self.by_study.items()}, prefix="ckpt")

    def find(self, name: object) -> tuple[str, Run]:
        """The study and run named by the picker (a study's name) or, as before studies, by the run's name."""
        for study, run in self.by_study.items():
            if name in (study, run.name):
                return study, run
        raise gr.Error("No such model in this tab.")

    def layout(self, token_box: gr.Textbox | None = None) -> None:
        """The components, inside the caller's ``gr.Tab``: layout only."""
        self.token_box = token_box or gr.Textbox(visible=False)
        gr.Markdown(
            "Read one dev prompt and two epochs' answers, blind, and say which is better: every epoch meets every "
            "other. The table sums up every epoch; **Serve this epoch** writes the run's `selected`, which the "
            "arena and the servers load."
        )
        self.study.layout()
        self.summary = gr.Dataframe(
            headers=[
                "epoch",
                "score [95 %]",
                "wins",
                "ties",
                "losses",
                "stops at EOT %",
                "mean tokens",
                "earlier ratings",
                "served",
            ],
            interactive=False,
            elem_id="ckpt-table",
        )
        with gr.Row():
            self.epoch_box = gr.Dropdown(choices=[], label="Epoch", elem_id="ckpt-epoch")
            self.select_btn = gr.Button("Serve this epoch", elem_id="ckpt-select")

    def wire(self, tab: gr.Tab) -> None:
        private = {"api_visibility": "private"}
        table, picker = [self.summary, self.epoch_box], self.study.picker
        for rated in self.study.wire(tab, api=False):  # the page's own /study_rate is the Studies tab's
            rated.then(self.refresh, inputs=[picker], outputs=table, **private)
        picker.change(self.refresh, inputs=[picker], outputs=table, **private)
        serve_inputs = [picker, self.epoch_box, self.token_box]
        self.select_btn.click(self.serve, inputs=serve_inputs, outputs=[self.study.note, *table], **private)

    # -- handlers --------------------------------------------------------------------------------------------
    def refresh(self, name: str) -> tuple:
        """The table and the epochs to serve (a positional pair: the page's load event uses it too)."""
        study, run = self.find(name)
        epochs = [f"epoch-{e}" for e in run.epochs()]
        rows = [_cell(row) for row in table(self.store, run, study)]
        return rows, gr.update(choices=epochs, value=run.selected() if run.selected() in epochs else None)

    def serve(self, name: str, epoch: str | None, token: str | None, request: gr.Request) -> tuple:
        """Write the run's ``selected``: what the arena and the servers load after a restart, so from a request
        that came from the public only with the admin token."""
        from serving.folder import FolderError, select

        if self.admin.gate.is_public(request) and not self.admin.allows(token, request):
            raise gr.Error("Serving another epoch needs the admin token.")
        _, run = self.find(name)
        if not epoch:
            raise gr.Error("Choose an epoch first.")
        if not isinstance(epoch, str) or not re.fullmatch(r"epoch-\d{1,4}", epoch):
            raise gr.Error("No such epoch.")
        try:
            select(run.path, int(epoch.removeprefix("epoch-")))
        except FolderError as err:
            raise gr.Error(str(err).removeprefix("error: ")) from None
        return f"{run.name} now serves {epoch} (restart the arena or the servers to load it).", *self.refresh(name)


def layout(store: ratings.Store, runs: list[Run], page: ArenaTab, token_box: gr.Textbox, tab: gr.Tab) -> tuple:
    """The tab inside the caller's ``gr.Tab`` (``tab``); returns what the page's load event needs to fill the
    table: the refresh handler, and its input and outputs. ``page.admin``/``token_box``: who may serve an epoch."""
    checkpoints = Tab(store, runs, page)
    checkpoints.layout(token_box)
    checkpoints.wire(tab)
    return checkpoints.refresh, checkpoints.study.picker, checkpoints.summary, checkpoints.epoch_box
