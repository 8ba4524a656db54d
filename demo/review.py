"""The Review tab: a second rater rates stored conversations turn by turn, for inter-rater agreement.

Conversations are drawn at random from those someone else rated and judged (so the first ratings are final),
never the reviewer's own (by session and by name), and shown blind: no model names, no first rater, no first
ratings. The store records which session was handed which conversation, and refuses ratings of turns it was
not handed.
"""

from __future__ import annotations

import gradio as gr

from demo import arena, protocol, ratings


def layout(store: ratings.Store, rater: gr.Textbox, enabled: bool = True) -> None:
    """The tab's components and events, inside the caller's ``gr.Tab``. Disabled (a public Space, by default),
    the hand-out endpoint refuses too: raters never see other raters' conversations."""
    items = gr.State(())

    def assign(rater_name: str, request: gr.Request) -> tuple:
        if not enabled:
            raise gr.Error("Reviews are off in this arena (LIMA_ARENA_REVIEW=true turns them on).")
        who = arena.rater_of(rater_name, request, default="")
        if not who:
            raise gr.Error("Type your name first: reviews are counted per rater.")
        conversation_id = store.assign_review(arena.session_of(request), who)
        if conversation_id is None:
            nothing = "Nothing to review right now: every conversation rated by someone else has your opinion."
            return (), nothing, []
        turns = store.review_turns(conversation_id, arena.session_of(request))
        shown = tuple((t.id, t.side, t.turn_index, t.user_text, t.assistant_text) for t in turns)
        listed = [{"turn_id": t.id, "side": t.side, "turn_index": t.turn_index} for t in turns]
        return shown, f"Conversation `{conversation_id[:8]}`: rate every answer of both sides.", listed

    def make_rate(turn_id: str):
        def rate(rating: str, rater_name: str, request: gr.Request) -> None:
            who = arena.rater_of(rater_name, request, default="")
            if not who:
                raise gr.Error("Type your name first.")
            try:
                store.rate(turn_id, rating, arena.session_of(request), who)
            except (ratings.NotAllowed, ValueError) as err:
                raise gr.Error(str(err)) from None

        return rate

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
                radio.input(make_rate(turn_id), inputs=[radio, rater], api_visibility="private")

    # API clients get the handed turns' ids (then rate them through /rate, which checks the hand-out).
    start.click(assign, inputs=[rater], outputs=[items, note, gr.JSON(visible=False)], api_name="review_next")
