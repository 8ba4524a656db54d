"""The Review tab: a second rater rates stored conversations turn by turn, for inter-rater agreement.

Conversations are drawn at random from those someone else rated and judged (so the first ratings are final),
never the reviewer's own (by session and by name), and shown blind: no model names, no first rater, no first
ratings. The store records which session was handed which conversation, and refuses ratings of turns it was
not handed.
"""

from __future__ import annotations

import gradio as gr

from demo import arena, clients, protocol, ratings


class Review:
    """The tab's context (the store, whether reviews are on: ``enabled`` None is on for local requests only,
    as ``gate`` tells them) and its handlers."""

    def __init__(self, store: ratings.Store, enabled: bool | None, gate: clients.Gate | None = None) -> None:
        self.store, self.enabled, self.gate = store, enabled, gate or clients.Gate()
        self.shown = enabled if enabled is not None else not self.gate.public

    def enabled_for(self, request: object) -> bool:
        return self.enabled if self.enabled is not None else not self.gate.is_public(request)

    def assign(self, rater_name: str, request: gr.Request) -> tuple:
        """Hand this session a conversation to review: its turns (for the page), a note, and their ids (API)."""
        if not self.enabled_for(request):
            raise gr.Error("Reviews are off in this arena (LIMA_ARENA_REVIEW=true turns them on).")
        session, who = clients.session(request), clients.rater(rater_name, request, default="")
        if not who:
            raise gr.Error("Type your name first: reviews are counted per rater.")
        conversation_id = self.store.assign_review(session, who)
        if conversation_id is None:
            nothing = "Nothing to review right now: every conversation rated by someone else has your opinion."
            return (), nothing, []
        turns = self.store.review_turns(conversation_id, session)
        shown = tuple((t.id, t.side, t.turn_index, t.user_text, t.assistant_text) for t in turns)
        listed = [{"turn_id": t.id, "side": t.side, "turn_index": t.turn_index} for t in turns]
        return shown, f"Conversation `{conversation_id[:8]}`: rate every answer of both sides.", listed

    def rate(self, turn_id: str, rating: str, rater_name: str, request: gr.Request) -> None:
        if not self.enabled_for(request):
            raise gr.Error("Reviews are off in this arena.")
        session, who = clients.session(request), clients.rater(rater_name, request, default="")
        if not who:
            raise gr.Error("Type your name first.")
        if not isinstance(rating, str) or rating not in protocol.RATINGS:
            raise gr.Error(f"rating must be one of {', '.join(protocol.RATINGS)}")
        try:
            self.store.rate(turn_id, rating, session, who)
        except (ratings.NotAllowed, ValueError) as err:
            raise gr.Error(str(err)) from None


def layout(review: Review, rater: gr.Textbox) -> None:
    """The tab's components and events, inside the caller's ``gr.Tab``. Disabled (a public Space, or a request
    through a proxy or tunnel, by default), the hand-out endpoint refuses too: raters never see other raters'
    conversations."""
    items = gr.State(())
    gr.Markdown(
        "Rate answers from conversations other raters had, as a second opinion (blind: no model names, no earlier "
        "ratings). " + protocol.RATING_HELP
    )
    start = gr.Button("Review a conversation", elem_id="review-next", variant="primary")
    note = gr.Markdown("", elem_id="review-note")

    @gr.render(inputs=[items])
    def turns(shown: tuple) -> None:
        for turn_id, side, turn_index, user, assistant in shown:
            with gr.Group():
                # Each label is a paragraph of its own: safe_markdown's output must start a block, or a fence
                # at its start would stop being a fence and the code inside it would render as Markdown.
                gr.Markdown(
                    f"**Side {side.upper()}, turn {turn_index}**\n\n**User:**\n\n{arena.safe_markdown(user)}\n\n"
                    f"**Assistant:**\n\n{arena.safe_markdown(assistant)}"
                )
                radio = gr.Radio(
                    list(protocol.RATINGS),
                    label=f"Your rating: side {side.upper()}, turn {turn_index}",
                    key=f"review-{turn_id}",
                    elem_classes=["review-rating"],
                )
                radio.input(review.rate, inputs=[gr.State(turn_id), radio, rater], api_visibility="private")

    # API clients get the handed turns' ids (then rate them through /rate, which checks the hand-out).
    start.click(review.assign, inputs=[rater], outputs=[items, note, gr.JSON(visible=False)], api_name="review_next")
