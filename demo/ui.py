"""The arena's page: its layout, and short named handlers that map what happens (a turn's events from
``arena.play_turn``, a rating, a verdict) to component updates, returned as ``{component: value}``.

The handlers are bound methods of ``ArenaTab``, over an explicit context (the models, the store, the limits, the
settings); the rules they apply are ``protocol``'s, and the turn itself is ``arena.play_turn``'s. The two sides
are separate Gradio events, so they stream concurrently and a slow or dead side never holds up the other.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Sequence

import gradio as gr

from demo import arena, checkpoints, checkpoints_tab, clients, limits, mirror, protocol, ratings, results, review
from demo.studies.ui import StudiesTab
from serving import backends

log = logging.getLogger("demo.app")

# Gradio's page runs the listeners of one trigger one after another, so "Send to both" clicks two hidden buttons
# (in the DOM): each side is then its own trigger and the two stream at once.
FIRE_BOTH = "() => { for (const side of ['a', 'b']) document.getElementById('fire-' + side).click(); }"
NO_CONVERSATION = "Start a new conversation first."
CONSENT_FIRST = "Read the notice above and accept it before your first message: nothing was sent or stored."


def consent_notice(dataset_repo: str | None) -> str:
    """What a rater is told before their first message on a public arena: what is stored and published, where,
    under which licence, and how to have it taken down."""
    _, licence, licence_url = mirror.LICENCE
    where = (
        f"the Hugging Face dataset [{dataset_repo}](https://huggingface.co/datasets/{dataset_repo}), which its "
        "operators may make public,"
        if dataset_repo
        else "this arena's database, which its operators may publish as a dataset,"
    )
    return (
        "**Before your first message.** This arena stores and publishes what you do here: your messages, both "
        "models' answers, your ratings and verdicts, and the name you type (a pseudonym is fine). They are kept in "
        f"{where} under the [{licence}]({licence_url}) licence: anyone may reuse them, crediting the arena. Do not "
        "type anything personal. To have a conversation taken down later, ask the operators, saying when you had it "
        "and how it began."
    )


def sentence(text: str) -> str:
    """A rule's refusal (``protocol``: lower case, no full stop) as a sentence on the page."""
    return text[:1].upper() + text[1:] + ("" if text.endswith((".", "?", "!")) else ".")


class TurnButton:
    """One side's send, or its regenerate: each is a Gradio event of its own (``/send_a``, ``/again_b``...)."""

    def __init__(self, page: ArenaTab, side: str, regenerate: bool) -> None:
        self.page, self.side, self.regenerate = page, side, regenerate

    async def play(
        self,
        message: str,
        conv: arena.Conversation | None,
        temperature: float,
        top_p: float,
        penalty: float,
        max_tokens: float,
        rater_name: str,
        consented: bool,
        request: gr.Request,
    ) -> AsyncIterator[dict]:
        self.page.check_consent(consented, request)
        try:
            decoding = arena.check_decoding(temperature, top_p, penalty, max_tokens, backends.TOTAL_TOKEN_BUDGET)
        except ValueError as err:  # refused before anything is counted or stored
            raise clients.refusal(sentence(str(err))) from None
        async for update in self.page.turn(self.side, self.regenerate, message, conv, decoding, rater_name, request):
            yield update


class VerdictButton:
    """One verdict's handler (``/verdict_a``, ``/verdict_b``, ``/verdict_tie``)."""

    def __init__(self, page: ArenaTab, verdict: str) -> None:
        self.page, self.verdict = page, verdict

    def give(self, conv: arena.Conversation | None, rater_name: str, request: gr.Request) -> dict:
        return self.page.give_verdict(self.verdict, conv, rater_name, request)


class ArenaTab:
    """The arena tab's context, components (made by the layout methods) and handlers (wired by ``wire``)."""

    def __init__(
        self,
        models: Sequence[arena.Backend],
        store: ratings.Store,
        *,
        blind: bool = True,
        turn_limit: int = protocol.DEFAULT_TURN_LIMIT,
        caps: limits.Limits | None = None,
        admin: results.Admin | None = None,
        openers: Sequence[dict] = (),
        dataset_repo: str | None = None,
        public_caps: limits.Limits | None = None,
    ) -> None:
        self.models, self.store, self.blind, self.turn_limit = list(models), store, blind, turn_limit
        self.dataset_repo = dataset_repo  # where the events are published (the consent notice names it)
        self.admin = admin or results.Admin(token=None, public=False)
        self.gate = self.admin.gate
        self.caps = caps or limits.Limits()
        # what a request that came through a proxy or a tunnel gets in an arena configured as private
        self.public_caps = self.caps if self.gate.public else public_caps or limits.Limits(**limits.PUBLIC_DEFAULTS)
        self.openers = list(openers)
        self.send_turns = {side: TurnButton(self, side, regenerate=False) for side in protocol.SIDES}
        self.again_turns = {side: TurnButton(self, side, regenerate=True) for side in protocol.SIDES}
        self.verdicts = {verdict: VerdictButton(self, verdict) for verdict in protocol.VERDICTS}

    # -- layout ----------------------------------------------------------------------------------------------
    def header(self) -> None:
        """Above the tabs: the title, the models' status, the rater's name, a new conversation."""
        self.conv = gr.State(None)
        self.rate_keys = {side: gr.State(()) for side in protocol.SIDES}
        self.judged = gr.State(False)  # the conversation has its verdict: its ratings are final
        gr.Markdown("# LIMA multi-turn arena\nTalk to both models, rate every answer, then say which was better.")
        self.status = gr.Markdown("Checking the models…", elem_id="status")
        with gr.Row():
            self.rater = gr.Textbox(label="Your name (rater)", placeholder="who is rating", scale=2, elem_id="rater")
            if os.environ.get("OAUTH_CLIENT_ID"):  # a Space with `hf_oauth: true`: raters sign in, names are theirs
                gr.LoginButton(scale=1)
            self.new_btn = gr.Button("New conversation", scale=1, elem_id="new-conversation")
        self.consent_layout()

    def consent_layout(self) -> None:
        """The consent notice and its button, shown (by ``consent_shown``, per visit) where consent is needed."""
        self.consented = gr.State(False)  # per session, on the server: a client cannot send it
        with gr.Group(visible=False, elem_id="consent") as self.consent_box:
            gr.Markdown(consent_notice(self.dataset_repo), elem_id="consent-notice")
            self.consent_btn = gr.Button("I agree: store and publish what I send", elem_id="consent-accept")

    def layout(self, max_new_tokens: int) -> None:
        """The arena tab's body, inside the caller's ``gr.Tab``: layout only."""
        gr.Markdown(protocol.RATING_HELP)
        self.labels, self.chats, self.inputs, self.send_btns, self.again_btns = {}, {}, {}, {}, {}
        with gr.Row(equal_height=False):
            for side in protocol.SIDES:
                with gr.Column(elem_id=f"side-{side}"):
                    self._side_column(side)
        with gr.Row():
            self.shared = gr.Textbox(
                placeholder="Message to both models",
                show_label=False,
                scale=5,
                elem_id="input-both",
                max_length=protocol.MAX_MESSAGE_CHARS,
            )
            self.send_both = gr.Button("Send to both", variant="primary", scale=1, elem_id="send-both")
        self.fire = {side: gr.Button(visible="hidden", elem_id=f"fire-{side}") for side in protocol.SIDES}
        self.follow_ups = gr.Markdown("", elem_id="follow-ups")
        with gr.Row():
            self.verdict_btns = {
                verdict: gr.Button(text, interactive=False, elem_id=f"verdict-{verdict}")
                for verdict, text in (("a", "A is better"), ("tie", "Tie"), ("b", "B is better"))
            }
        self.verdict_note = gr.Markdown("", elem_id="verdict-note")
        self.opener_list = None
        if self.openers:
            self.opener_list = gr.Dataset(
                components=[gr.Textbox(visible=False)],
                samples=[[f"{o['category']}: {o['prompt']}"] for o in self.openers],
                label="Evaluation openers (click to use)",
                type="index",
                samples_per_page=10,
                elem_id="openers",
            )
        with gr.Accordion("Decoding (LIMA: top-p 0.9, temperature 0.7, repetition penalty 1.2)", open=False):
            self.decoding = [
                gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="temperature"),
                gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="top-p"),
                gr.Slider(1.0, 2.0, value=1.2, step=0.05, label="repetition penalty"),
                gr.Slider(16, backends.TOTAL_TOKEN_BUDGET, value=max_new_tokens, step=16, label="max new tokens"),
            ]

    def _side_column(self, side: str) -> None:
        self.labels[side] = gr.Markdown(arena.label(side, "", None), elem_id=f"label-{side}")
        self.chats[side] = gr.Chatbot(
            label=f"Model {side.upper()}",
            elem_id=f"chat-{side}",
            height=420,
            feedback_options=None,
            sanitize_html=True,
            allow_tags=False,
        )
        with gr.Row():
            self.inputs[side] = gr.Textbox(
                placeholder=f"Follow-up to {side.upper()} only",
                show_label=False,
                scale=4,
                elem_id=f"input-{side}",
                max_length=protocol.MAX_MESSAGE_CHARS,
            )
            self.send_btns[side] = gr.Button(f"Send to {side.upper()}", scale=1, elem_id=f"send-{side}")
        self.again_btns[side] = gr.Button("↻ Regenerate", size="sm", interactive=False, elem_id=f"again-{side}")

        @gr.render(inputs=[self.rate_keys[side], self.judged])
        def rating_controls(keys: tuple, final: bool) -> None:
            current = self.store.ratings_of([key[1] for key in keys])
            for n, turn_id, opening in keys:
                radio = gr.Radio(
                    list(protocol.RATINGS),
                    value=current.get(turn_id),
                    interactive=not final,
                    label=f"{side.upper()} · turn {n}: “{opening}”",
                    key=f"rate-{turn_id}",
                    elem_classes=["turn-rating"],
                    elem_id=f"rate-{side}-{n}",
                )
                radio.input(
                    self.rate_shown,
                    inputs=[gr.State(turn_id), radio, self.rater, self.conv],
                    outputs=[*self.verdict_btns.values(), self.verdict_note],
                    api_visibility="private",
                    concurrency_limit=None,
                )

    # -- handlers: consent ----------------------------------------------------------------------------------
    def consent_required(self, request: gr.Request) -> bool:
        """Whether this request may send only after accepting the notice: a public one (a public arena, or a
        request through a proxy or tunnel). The one place that decides it."""
        return self.gate.is_public(request)

    def consent_shown(self, request: gr.Request) -> dict:
        return {self.consent_box: gr.update(visible=self.consent_required(request))}

    def accept_consent(self) -> dict:
        """API ``/consent``: this session accepts the notice (once; it holds for every later conversation)."""
        return {self.consented: True, self.consent_box: gr.update(visible=False)}

    def check_consent(self, consented: bool, request: gr.Request) -> None:
        """Refuse a message (before anything is counted or stored) from a session that has not accepted."""
        if self.consent_required(request) and consented is not True:
            raise gr.Error(CONSENT_FIRST)

    # -- handlers: a conversation --------------------------------------------------------------------------
    def new_conversation(self, old: arena.Conversation | None = None) -> dict:
        """A fresh conversation; the page's old one (if any) starts over in place, so its running streams end."""
        names = [model.name for model in self.models]
        conv = old or arena.new_conversation(self.blind, configured=names)
        if old is not None:
            old.restart(configured=names)
        return {
            self.conv: conv,
            **{self.chats[side]: [] for side in protocol.SIDES},
            **{self.rate_keys[side]: () for side in protocol.SIDES},
            **{self.labels[side]: arena.label(side, conv.names[i], conv) for i, side in enumerate(protocol.SIDES)},
            **{button: gr.update(interactive=False) for button in self.verdict_btns.values()},
            self.verdict_note: "",
            self.follow_ups: "",
            self.judged: False,
        }

    def redraw(self, conv: arena.Conversation) -> dict:
        """Both panes from the conversation's state (after a new start, a chunk of the old one may be on screen)."""
        return {self.chats[side]: arena.chat_messages(conv.sides[side]) for side in protocol.SIDES}

    async def probe(self) -> AsyncIterator[str]:
        loading = sum(isinstance(m, backends.LocalBackend) and not m.settled for m in self.models)
        if loading:  # the page answers at once; say why the first answer may wait
            yield (
                f"⏳ **Loading {loading} of {len(self.models)} models in-process**: the page works now, and a message"
                " waits until they are loaded."
            )
        statuses = await asyncio.gather(*(m.probe() for m in self.models))
        places = ("left", "right")
        if not self.blind:
            yield "  \n".join(
                f"{'🟢' if st.ok else '🔴'} **{where}**: `{st.model}`: {st.detail}"
                for where, st in zip(places, statuses, strict=True)
            )
            return
        # Blind: how many sides are ready, never which models they are (the log has the details).
        for where, st in zip(places, statuses, strict=True):
            (log.info if st.ok else log.warning)("%s: %s: %s", where, st.model, st.detail)
        ready = sum(st.ok for st in statuses)
        state = "🟢" if ready == len(statuses) else "🔴"
        yield (
            f"{state} **{ready} of {len(statuses)} sides ready**" + ("" if ready == 2 else ": see the log") + "  \n"
            "Blind mode: which one sits on A is drawn per conversation and shown after your verdict."
        )

    def pick_opener(self, index: int, conv: arena.Conversation | None, request: gr.Request) -> dict:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.openers):
            raise clients.refusal("No such opener.")
        opener = self.openers[index]
        if conv is not None and conv.verdict is None:  # after the verdict, nothing of it changes
            session = clients.session(request)
            conv.opener_id = opener["id"]
            if self.store.conversation(conv.id):
                try:
                    self.store.set_opener(conv.id, session, opener["id"])
                except ratings.NotAllowed as err:
                    raise gr.Error(str(err)) from None
        follow_ups = "\n".join(f"{n}. {arena.safe_markdown(f)}" for n, f in enumerate(opener["follow_ups"], 1))
        planned = f"**Planned follow-ups** (adapt them to what each side said):\n\n{follow_ups}"
        return {self.shared: opener["prompt"], self.follow_ups: planned}

    def fill_rater(self, request: gr.Request) -> dict:
        user = getattr(request, "username", None)
        return gr.update(value=user, interactive=False) if user else gr.skip()

    # -- handlers: a turn ------------------------------------------------------------------------------------
    async def turn(
        self,
        side: str,
        regenerate: bool,
        message: str,
        conv: arena.Conversation | None,
        decoding: backends.Decoding,
        rater_name: str,
        request: gr.Request,
    ) -> AsyncIterator[dict]:
        """One side's turn (``arena.play_turn``), each event shown as it comes."""
        if conv is None:
            raise gr.Error(NO_CONVERSATION)
        if not isinstance(message, str) and not (regenerate and message is None):
            raise clients.refusal("A message is text.")
        session, rater = clients.session(request), clients.rater(rater_name, request)
        events = arena.play_turn(
            conv,
            side,
            message,
            backend=self.models[conv.models[protocol.SIDES.index(side)]],
            decoding=decoding,
            store=self.store,
            session=session,
            rater=rater,
            regenerate=regenerate,
            turn_limit=self.turn_limit,
            caps=self.caps_for(request),
            keys=self.gate.keys(request, session),
        )
        async for event in events:
            yield self.shown(event, conv.sides[side])

    def shown(self, event: arena.Event, side: arena.Side) -> dict:
        """What a turn's event changes on the page."""
        chat = self.chats[event.side]
        match event:
            case arena.Refused(limit=True):  # an API client gets an error: the turn did not happen
                raise clients.refusal(event.reason)
            case arena.Refused():
                gr.Warning(sentence(event.reason))
                return {chat: arena.chat_messages(side)}
            case arena.Started():
                return {chat: arena.chat_messages(side), self.again_btns[event.side]: gr.update(interactive=False)}
            case arena.Chunk():
                return {chat: arena.chat_messages(side, event.answer)}
            case arena.Waiting():
                return {chat: arena.chat_messages(side, f"_{event.note}…_")}
            case arena.Note():  # a retry
                return {chat: arena.chat_messages(side, f"_{event.note}_")}
        again = "↻ Retry" if isinstance(event, arena.Failed) else "↻ Regenerate"
        return {
            chat: arena.chat_messages(side),
            self.rate_keys[event.side]: side.rateable(),
            self.again_btns[event.side]: gr.update(value=again, interactive=True),
        }

    # -- handlers: ratings and the verdict -------------------------------------------------------------------
    def rate_shown(
        self, turn_id: str, rating: str, rater_name: str, conv: arena.Conversation | None, request: gr.Request
    ) -> dict:
        """A rating control of the page: rate, then say whether the verdict may be given."""
        self.rate_by_id(turn_id, rating, rater_name, request)
        return self.verdict_controls(conv)

    def rate_by_id(self, turn_id: str, rating: str, rater_name: str, request: gr.Request) -> str:
        """API: rate a turn of one's own conversation by id (the store checks the id belongs to the session).
        Every input is checked before the limit counts it, and the limit before the store sees it."""
        session, rater = clients.session(request), clients.rater(rater_name, request)
        if not isinstance(rating, str) or rating not in protocol.RATINGS:
            raise clients.refusal(f"rating must be one of {', '.join(protocol.RATINGS)}")
        try:
            turn_id = arena.check_turn_id(turn_id)
            self.caps_for(request).rate(self.gate.keys(request, session))
            self.store.rate(turn_id, rating, session, rater)
        except (limits.LimitReached, ratings.NotAllowed, ValueError) as err:
            raise clients.refusal(str(err)) from None
        return "saved"

    def verdict_controls(self, conv: arena.Conversation | None) -> dict:
        """The verdict buttons, open once nothing blocks the verdict; else the hint of what does."""
        buttons = self.verdict_btns.values()
        if conv is None or conv.verdict is not None:
            return {button: gr.update(interactive=False) for button in buttons}
        blocked = protocol.verdict_refusal(
            judged=False,
            unrated=self.store.unrated(conv.id),
            rated_sides=self.store.rated_sides(conv.id),
            rate_every_turn=self.store.rate_every_turn,
            busy=conv.busy,
        )
        hint = sentence(blocked) if blocked else ""
        return {**{button: gr.update(interactive=blocked is None) for button in buttons}, self.verdict_note: hint}

    def give_verdict(self, verdict: str, conv: arena.Conversation | None, rater_name: str, request: gr.Request) -> dict:
        if conv is None:
            raise gr.Error(NO_CONVERSATION)
        session, rater = clients.session(request), clients.rater(rater_name, request)
        try:
            self.store.set_verdict(conv.id, verdict, session, rater, busy=conv.busy)
        except (ratings.NotAllowed, ValueError) as err:
            raise gr.Error(str(err)) from None
        conv.verdict = verdict
        said, (a, b) = protocol.VERDICT_SAID[verdict], (backends.redact(name) for name in conv.names)
        note = f"Verdict saved: **{said}**. A was `{a}`, B was `{b}`. Start a new conversation."
        return {
            **{self.labels[side]: arena.label(side, conv.names[i], conv) for i, side in enumerate(protocol.SIDES)},
            **{button: gr.update(interactive=False) for button in self.verdict_btns.values()},
            self.verdict_note: note,
            self.judged: True,  # the rating controls render again, read-only: the judgment is final
        }

    def current_conversation(self, conv: arena.Conversation | None, request: gr.Request) -> dict:
        """API: the session's current conversation as stored: turn ids, texts, ratings, verdict."""
        record = self.store.conversation(conv.id) if conv is not None else None
        if record is None:
            return {"id": conv.id if conv else None, "turns": [], "ratings": {}, "verdict": None}
        if record["session"] != clients.session(request):
            raise gr.Error("this conversation does not belong to your session")
        turns = [
            {"turn_id": t.id, "side": t.side, "turn_index": t.turn_index, "attempt": t.attempt, "status": t.status}
            for t in self.store.turns(conv.id)
        ]
        return {"id": conv.id, "turns": turns, "ratings": self.store.ratings(conv.id), "verdict": record["verdict"]}

    def caps_for(self, request: gr.Request) -> limits.Limits:
        """The limits of the arena as configured, or a public arena's for a request through a proxy or tunnel."""
        return self.public_caps if self.gate.is_public(request) else self.caps

    def tabs_for(self, request: gr.Request) -> tuple:
        """Whether this request sees Results and Review: one through a proxy or a tunnel sees less."""
        return gr.update(visible=self.admin.open_for(request)), gr.update(visible=self.reviews.enabled_for(request))

    def unlock(self, token: str, request: gr.Request) -> tuple:
        if not self.admin.allows(token, request):
            raise gr.Error("That is not the admin token.")
        return gr.update(visible=True), "Results unlocked for this page."

    # -- wiring ----------------------------------------------------------------------------------------------
    def wire(self, demo: gr.Blocks) -> None:
        """The arena's events; API names and inputs are a contract (tests and API clients call them)."""
        reset = [
            self.conv, *self.chats.values(), *self.rate_keys.values(), *self.labels.values(),
            *self.verdict_btns.values(), self.verdict_note, self.follow_ups, self.judged,
        ]  # fmt: skip
        demo.load(self.new_conversation, outputs=reset, api_name="new_conversation")
        demo.load(self.probe, outputs=self.status, api_visibility="private")
        demo.load(self.fill_rater, outputs=self.rater, api_visibility="private")
        demo.load(self.consent_shown, outputs=self.consent_box, api_visibility="private")
        self.consent_btn.click(self.accept_consent, outputs=[self.consented, self.consent_box], api_name="consent")
        streams = [stream for side in protocol.SIDES for stream in self._wire_side(side)]
        for trigger in (self.send_both.click, self.shared.submit):
            trigger(None, js=FIRE_BOTH)  # first: the sides start before the input is cleared
            trigger(lambda: "", outputs=self.shared, api_visibility="private")
        # A new conversation owns the page: the old one's running streams are cancelled (and told to stop).
        self.new_btn.click(
            self.new_conversation, inputs=[self.conv], outputs=reset, api_visibility="private", cancels=streams
        ).then(self.redraw, inputs=[self.conv], outputs=list(self.chats.values()), api_visibility="private")
        verdict_outputs = [*self.labels.values(), *self.verdict_btns.values(), self.verdict_note, self.judged]
        for verdict, button in self.verdict_btns.items():
            button.click(
                self.verdicts[verdict].give,
                inputs=[self.conv, self.rater],
                outputs=verdict_outputs,
                api_name=f"verdict_{verdict}",
            )
        if self.opener_list is not None:
            self.opener_list.click(
                self.pick_opener,
                inputs=[self.opener_list, self.conv],
                outputs=[self.shared, self.follow_ups],
                api_visibility="private",
            )

    def _wire_side(self, side: str) -> list:
        """One side's turn events: one event per trigger and no concurrency cap, so each side streams on its own."""
        send, again, message = self.send_turns[side].play, self.again_turns[side].play, self.inputs[side]
        inputs = [self.conv, *self.decoding, self.rater, self.consented]
        common = {
            "outputs": [self.chats[side], self.rate_keys[side], self.again_btns[side]],
            "concurrency_limit": None,
        }
        streams = [
            self.fire[side].click(send, inputs=[self.shared, *inputs], api_name=f"send_{side}", **common),
            self.send_btns[side].click(send, inputs=[message, *inputs], api_visibility="private", **common),
            message.submit(send, inputs=[message, *inputs], api_visibility="private", **common),
            self.again_btns[side].click(again, inputs=[message, *inputs], api_name=f"again_{side}", **common),
        ]
        for trigger in (self.send_btns[side].click, message.submit):
            trigger(lambda: "", outputs=message, api_visibility="private")
        return streams

    def wire_api(self) -> None:
        """API-only endpoints (hidden components): the session's conversation as stored, and rating by turn id."""
        api_btn = gr.Button(visible=False)
        api_btn.click(
            self.current_conversation, inputs=[self.conv], outputs=gr.JSON(visible=False), api_name="conversation"
        )
        api_btn.click(
            self.rate_by_id,
            inputs=[gr.Textbox(visible=False), gr.Textbox(visible=False), self.rater],
            outputs=gr.Textbox(visible=False),
            api_name="rate",
            concurrency_limit=None,  # a rating is one short SQLite write; the store serialises them itself
            queue=False,
        )


def build(
    models: Sequence[arena.Backend],
    store: ratings.Store,
    *,
    openers: Sequence[dict] = (),
    blind: bool = True,
    turn_limit: int = protocol.DEFAULT_TURN_LIMIT,
    max_new_tokens: int = 512,
    admin: results.Admin | None = None,
    review_open: bool | None = True,
    checkpoint_runs: list[checkpoints.Run] | None = None,
    caps: limits.Limits | None = None,
    dataset_repo: str | None = None,
    public_caps: limits.Limits | None = None,
) -> gr.Blocks:
    """The whole page: the arena, Review, Results, (given runs) Checkpoints and (given studies) Studies tabs, and
    the admin unlock.
    ``caps``: the limits as configured; ``public_caps``: those of a request that came through a proxy or a
    tunnel to an arena configured as private (default: the public defaults). ``review_open`` None: Review is on
    for local requests only."""
    page = ArenaTab(
        models, store, blind=blind, turn_limit=turn_limit, caps=caps, admin=admin, openers=openers,
        dataset_repo=dataset_repo, public_caps=public_caps,
    )  # fmt: skip
    page.reviews = reviews = review.Review(store, review_open, page.gate)
    with gr.Blocks(title="LIMA multi-turn arena") as demo:
        page.header()
        admin_token = gr.Textbox(
            label="Admin token",
            type="password",
            render=False,
            elem_id="admin-token",
            html_attributes=gr.InputHTMLAttributes(autocomplete="off"),  # not kept by the browser
        )
        with gr.Tabs():
            with gr.Tab("Arena", id="arena"):
                page.layout(max_new_tokens)
            with gr.Tab("Review", id="review", visible=reviews.shown) as review_tab:
                review.layout(reviews, page.rater)
            with gr.Tab("Results", id="results", visible=page.admin.open, elem_id="tab-results") as results_tab:
                results.layout(store, page.admin, admin_token)
            if checkpoint_runs:
                with gr.Tab("Checkpoints", id="checkpoints") as ckpt_tab:
                    refresh, which, summary, epoch_box = checkpoints_tab.layout(
                        store, checkpoint_runs, page, admin_token, ckpt_tab
                    )
                demo.load(refresh, inputs=[which], outputs=[summary, epoch_box], api_visibility="private")
            studies_tab = StudiesTab(store, page, names=checkpoints.other_studies(store))
            if studies_tab.names:  # the database holds a study (``python -m demo.studies generate``)
                with gr.Tab("Studies", id="studies", elem_id="tab-studies") as study_tab:
                    studies_tab.layout()
        if page.admin.open or reviews.shown:  # what this request may see: a proxied one sees less
            demo.load(page.tabs_for, outputs=[results_tab, review_tab], api_visibility="private")
        if page.admin.open:  # results are open to whoever runs the app: no token to ask for
            with gr.Column(visible=False):
                admin_token.render()
        else:
            with gr.Accordion("Admin", open=False):
                admin_token.render()
                unlock_btn = gr.Button("Show results", elem_id="admin-unlock")
                unlock_note = gr.Markdown("")
            unlock_btn.click(
                page.unlock, inputs=admin_token, outputs=[results_tab, unlock_note], api_visibility="private"
            )
        page.wire(demo)
        page.wire_api()
        if studies_tab.names:
            studies_tab.wire(study_tab)
    # Direct REST calls (``/gradio_api/run/<name>``) reach only the events made direct (``/rate``): the others go
    # through the queue and its guard (demo.queue_guard), everywhere. Gradio opens them except on a Space.
    demo.api_open = False
    return demo
