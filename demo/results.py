"""The Results tab: the paper's Figure 7 for the models in this arena, and the ratings export, for admins.

In a public arena (a Space, ``--share``, or a host beyond loopback: ``app.is_public``), and for any request that
came through a proxy or a tunnel (``clients.Gate``), the tab is hidden and every handler refuses unless the admin
token (``LIMA_ARENA_ADMIN_TOKEN``, from the environment only) is given; the token
is compared in constant time and never sent back. Run on loopback with no admin token configured, the results
are open to whoever runs the app.
"""

from __future__ import annotations

import hmac
import tempfile
from pathlib import Path

import gradio as gr

from demo import clients, ratings

FORMATS = ("jsonl", "csv")
MAX_TOKEN_CHARS = 1024


class Admin:
    """Who may see results: anyone on a private (loopback) arena when no token is set, for a request that is
    local itself (``clients.Gate.is_public``); only token holders otherwise, and always in a public arena."""

    def __init__(self, token: str | None, public: bool, gate: clients.Gate | None = None) -> None:
        self._token = token or None
        self.gate = gate or clients.Gate(public=public)
        self.public = public or self.gate.public
        self.open = self._token is None and not self.public

    def open_for(self, request: object) -> bool:
        """Results open without a token for this request (a local one, to an arena with no token)."""
        return self.open and not self.gate.is_public(request)

    def allows(self, given: object, request: object) -> bool:
        if self.open_for(request):
            return True
        if self._token is None or not isinstance(given, str) or len(given) > MAX_TOKEN_CHARS:
            return False
        return hmac.compare_digest(given.encode(), self._token.encode())


def layout(store: ratings.Store, admin: Admin, token_box: gr.Textbox) -> None:
    """The tab's components and events, inside the caller's ``gr.Tab``."""
    from demo import report

    def check(token: str | None, request: gr.Request) -> None:
        if not admin.allows(token, request):
            raise gr.Error("Results need the admin token.")

    def refresh(token: str | None, request: gr.Request) -> tuple:
        check(token, request)
        data = report.build_report(store.path)
        drawn = report.write_figures(data, tempfile.mkdtemp(prefix="lima-results-"))
        return *(str(drawn[entry.name]) for entry in report.FIGURES), report.markdown(data), data

    def export(token: str | None, fmt: str, request: gr.Request) -> str:
        check(token, request)
        if fmt not in FORMATS:
            raise gr.Error(f"Export as one of {', '.join(FORMATS)}.")
        out = Path(tempfile.mkdtemp(prefix="lima-export-")) / f"ratings.{fmt}"
        report.export(store.path, fmt, out)
        return str(out)

    gr.Markdown("Turn ratings per model, as in LIMA's Figure 7, beside the paper's bars; refreshed on demand.")
    refresh_btn = gr.Button("Refresh results", variant="primary", elem_id="results-refresh")
    with gr.Column(elem_id="results-figure"):  # every registered figure, in the order the report lists them
        charts = [
            gr.Image(label=entry.title, type="filepath", elem_id=f"results-{entry.name}") for entry in report.FIGURES
        ]
    summary = gr.Markdown("", elem_id="results-summary")
    with gr.Row():
        fmt = gr.Radio(list(FORMATS), value="jsonl", label="Export format", scale=1)
        export_btn = gr.Button("Export ratings", scale=1, elem_id="results-export")
    exported = gr.File(label="Export", elem_id="results-file")
    refresh_btn.click(
        refresh, inputs=[token_box], outputs=[*charts, summary, gr.JSON(visible=False)], api_name="results"
    )
    export_btn.click(export, inputs=[token_box, fmt], outputs=exported, api_name="export")
