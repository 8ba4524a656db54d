"""The LIMA multi-turn arena: two models side by side, every assistant turn rated, then a verdict.

    python demo/app.py [--left SRC] [--right SRC] [--db PATH] [--host H] [--port P] [--share]

This file is the UI only: layout and event wiring. Conversation state lives in ``arena``, models in
``backends``, ratings in ``ratings``, settings in ``settings``. The two sides are separate Gradio events, so
they stream concurrently and a slow or dead side never holds up the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python demo/app.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gradio as gr
from starlette.middleware import Middleware

from common import prompts
from demo import arena, checkpoints, limits, mirror, protocol, ratings, results, review, settings, timings
from serving import backends

log = logging.getLogger("demo.app")

OPENERS_FILE = Path(__file__).resolve().parents[1] / "dialogues" / "eval_openers.jsonl"
WARMUP_RETRIES = 6  # a server scaled to zero answers 503 while it wakes: ask again, visibly, for ~30 s
WARMUP_WAIT_S = 5.0
SIDES = ("a", "b")
STOPPED = "stopped: a new conversation was started"  # the error of an answer its rater left mid-stream
FIRE_BOTH = "() => { for (const side of ['a', 'b']) document.getElementById('fire-' + side).click(); }"


def load_openers(path: Path = OPENERS_FILE) -> list[dict]:
    """The evaluation openers as ``{id, prompt, category, follow_ups}``; none when the file is missing."""
    if not path.is_file():
        return []
    openers, problems = prompts.load_prompts(path, with_follow_ups=True, check=protocol.check_message)
    for problem in problems:  # a bad line leaves its opener out of the list, not the arena down
        log.warning("%s", problem)
    return [opener.record() for opener in openers]


def build(
    models: list[backends.LocalBackend | backends.RemoteBackend],
    store: ratings.Store,
    blind: bool = True,
    turn_limit: int = arena.DEFAULT_TURN_LIMIT,
    max_new_tokens: int = 512,
    admin: results.Admin | None = None,
    review_open: bool = True,
    checkpoint_runs: list[checkpoints.Run] | None = None,
    caps: limits.Limits | None = None,
) -> gr.Blocks:
    """The arena's Blocks for two models (configured left and right) and a ratings store."""
    openers = load_openers()
    admin = admin or results.Admin(token=None, public=False)
    caps = caps or limits.Limits()

    def keys(request: gr.Request) -> list[str]:
        return limits.keys_of(request, arena.session_of(request), admin.public)

    # -- handlers: one per idea ----------------------------------------------------------------------------
    def new_conversation(old: arena.Conversation | None = None) -> tuple:
        if old is not None:
            old.closed = True  # its running streams stop and write nothing more
        conv = arena.new_conversation(blind)
        empty = [arena.Side(), arena.Side()]
        verdict_off = [gr.update(interactive=False)] * 3
        return (
            conv,
            *empty,
            [],
            [],
            (),
            (),
            *(arena.label(s, models[conv.models[i]].name, conv) for i, s in enumerate(SIDES)),
            *verdict_off,
            "",
            "",
            False,
        )

    async def probe():
        loading = sum(isinstance(m, backends.LocalBackend) and not m.settled for m in models)
        if loading:  # the page answers at once; say why the first answer may wait
            yield (
                f"⏳ **Loading {loading} of {len(models)} models in-process**: the page works now, and a message"
                " waits until they are loaded."
            )
        statuses = await asyncio.gather(*(m.probe() for m in models))
        if blind:  # how many sides are ready, never which models they are (the log has the details)
            ready = sum(st.ok for st in statuses)
            for where, st in zip(("left", "right"), statuses, strict=True):
                (log.info if st.ok else log.warning)("%s: %s: %s", where, st.model, st.detail)
            state = "🟢" if ready == len(statuses) else "🔴"
            lines = [f"{state} **{ready} of {len(statuses)} sides ready**" + ("" if ready == 2 else ": see the log")]
            lines.append("Blind mode: which one sits on A is drawn per conversation and shown after your verdict.")
        else:
            lines = [
                f"{'🟢' if st.ok else '🔴'} **{where}**: `{st.model}`: {st.detail}"
                for where, st in zip(("left", "right"), statuses, strict=True)
            ]
        yield "  \n".join(lines)

    def secrets_of(backend) -> list[str]:
        """What would name the model behind a side: its name, source, URL, served model id."""
        return [str(getattr(backend, key, "") or "") for key in ("name", "source", "url", "model", "model_id")]

    def shown_error(err: str, backend, side_key: str, conv: arena.Conversation) -> str:
        return err if conv.revealed else arena.redact(err, secrets_of(backend), side_key)

    def make_respond(side_key: str, again: bool):
        index = SIDES.index(side_key)

        async def respond(
            message: str,
            conv: arena.Conversation | None,
            side: arena.Side,
            temperature: float,
            top_p: float,
            repetition_penalty: float,
            max_tokens: float,
            rater_name: str,
            request: gr.Request,
        ):
            skip = gr.skip()
            if conv is None:
                raise gr.Error("Start a new conversation first.")
            if conv.verdict is not None:  # judged and unblinded: further turns would not be blind
                gr.Warning("This conversation has its verdict; start a new one.")
                yield arena.chat_messages(side), skip, skip, skip
                return
            if side.busy:
                gr.Warning(f"Model {side_key.upper()} is still answering.")
                yield arena.chat_messages(side), skip, skip, skip
                return
            if again:
                if not side.turns:
                    gr.Warning("Nothing to regenerate yet.")
                    yield arena.chat_messages(side), skip, skip, skip
                    return
                last = side.turns[-1]
                if store.rate_every_turn and last.turn_id and not last.error:
                    rated = await asyncio.to_thread(store.ratings_of, [last.turn_id])
                    if last.turn_id not in rated:  # a fail must not vanish by asking again
                        gr.Warning("Rate this answer before regenerating it: every answer is rated.")
                        yield arena.chat_messages(side), skip, skip, skip
                        return
                text = side.turns.pop().user  # the old answer (and its rating) stays in the store
            else:
                try:
                    text = arena.check_message(message)
                except ValueError as err:
                    gr.Warning(str(err))
                    yield arena.chat_messages(side), skip, skip, skip
                    return
                if len(side.turns) >= turn_limit:
                    gr.Warning(f"This conversation reached its limit of {turn_limit} turns; start a new one.")
                    yield arena.chat_messages(side), skip, skip, skip
                    return
            try:  # before anything is stored: a refused turn leaves no trace
                caps.start_turn(keys(request))
            except limits.LimitReached as err:
                raise gr.Error(str(err)) from None
            session, rater = arena.session_of(request), arena.rater_of(rater_name, request)
            backend = models[conv.models[index]]
            names = [models[i].name for i in conv.models]
            # Store calls run off the event loop: a write (a lock and an fsync) never stalls other streams.
            await asyncio.to_thread(
                store.ensure_conversation, conv.id, session, names[0], names[1], conv.blind, rater, conv.opener_id
            )
            decoding = backends.Decoding(float(temperature), float(top_p), float(repetition_penalty), int(max_tokens))
            turn = arena.TurnView(user=text)
            side.turns.append(turn)
            side.busy = True
            answer, started, first_token_s, chunks = "", time.time(), None, 0

            def store_turn(error: str | None):
                return store.add_turn(
                    conv.id,
                    session,
                    side_key,
                    len(side.turns),
                    backend.name,
                    text,
                    answer,
                    backend.decoding_record(decoding),
                    started,
                    first_token_s,
                    status="error" if error else "complete",
                    error=error,
                )

            try:
                yield arena.chat_messages(side), side, skip, gr.update(interactive=False)
                for attempt in range(WARMUP_RETRIES + 1):
                    try:
                        async for chunk in backend.stream(side.history(), decoding):
                            if conv.closed:  # the rater moved on: keep what was said, write nothing more
                                break
                            if isinstance(chunk, backends.Waiting):  # queued behind other raters: say so
                                if not answer:
                                    yield arena.chat_messages(side, f"_{chunk}…_"), skip, skip, skip
                                continue
                            if first_token_s is None:
                                first_token_s = time.time() - started
                            answer += chunk
                            chunks += 1
                            yield arena.chat_messages(side, answer), skip, skip, skip
                        break
                    except backends.BackendError as err:
                        if err.warming_up and not answer and attempt < WARMUP_RETRIES:
                            reason = shown_error(str(err), backend, side_key, conv)
                            waiting = f"{reason} · retrying in {WARMUP_WAIT_S:.0f} s ({attempt + 1}/{WARMUP_RETRIES})"
                            yield arena.chat_messages(side, f"_{waiting}_"), skip, skip, skip
                            await asyncio.sleep(WARMUP_WAIT_S)
                            continue
                        turn.error = str(err)
                        break
                    except Exception as err:  # a bug or an unforeseen failure: still that side's error, not a hang
                        log.exception("side %s (%s) failed", side_key, backend.name)
                        turn.error = f"unexpected error: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
                        break
                if conv.closed:
                    if answer:
                        with contextlib.suppress(ratings.NotAllowed):
                            await asyncio.to_thread(store_turn, STOPPED)
                    return
                turn.assistant = answer
                try:
                    stored = await asyncio.to_thread(store_turn, turn.error)
                except ratings.NotAllowed as err:  # judged while this side was answering: the turn is not kept
                    side.turns.pop()
                    gr.Warning(str(err))
                    yield arena.chat_messages(side), side, side.rateable(), skip
                    return
                turn.turn_id = stored.id
                if turn.error:
                    turn.error = shown_error(turn.error, backend, side_key, conv)  # the store keeps the full text
            except asyncio.CancelledError:  # a new conversation cancelled this stream: keep what it had produced
                if answer:
                    with contextlib.suppress(Exception):
                        store_turn(STOPPED)
                raise
            finally:
                side.busy = False
                caps.generated(chunks)  # a streamed chunk is a token on TGI and in-process
            again_label = "↻ Retry" if turn.error else "↻ Regenerate"
            yield arena.chat_messages(side), side, side.rateable(), gr.update(value=again_label, interactive=True)

        return respond

    def make_rate(turn_id: str):
        def rate(rating: str, rater_name: str, conv: arena.Conversation | None, request: gr.Request) -> tuple:
            rate_by_id(turn_id, rating, rater_name, request)
            return _verdict_controls(conv)

        return rate

    def _verdict_controls(conv: arena.Conversation | None) -> tuple:
        if conv is None or conv.verdict is not None:
            return (*[gr.update(interactive=False)] * 3, gr.skip())
        unrated = store.unrated(conv.id) if store.rate_every_turn else []
        unlocked = not unrated and store.rated_sides(conv.id) == set(SIDES)
        if unlocked:
            hint = ""
        elif unrated:
            hint = f"Rate every answer to judge ({len(unrated)} still unrated)."
        else:
            hint = "Rate at least one answer on each side to judge."
        return (*[gr.update(interactive=unlocked)] * 3, hint)

    def make_verdict(verdict: str):
        def judge(conv: arena.Conversation | None, rater_name: str, request: gr.Request) -> tuple:
            if conv is None:
                raise gr.Error("Start a new conversation first.")
            try:
                store.set_verdict(conv.id, verdict, arena.session_of(request), arena.rater_of(rater_name, request))
            except (ratings.NotAllowed, ValueError) as err:
                raise gr.Error(str(err)) from None
            conv.verdict = verdict
            names = [models[i].name for i in conv.models]
            said = {"a": "A is better", "b": "B is better", "tie": "a tie"}[verdict]
            note = f"Verdict saved: **{said}**. A was `{names[0]}`, B was `{names[1]}`. Start a new conversation."
            labels = [arena.label(s, names[i], conv) for i, s in enumerate(SIDES)]
            # `judged` turns True: the rating controls render again, read-only, since the judgment is final.
            return (*labels, *[gr.update(interactive=False)] * 3, note, True)

        return judge

    def pick_opener(index: int, conv: arena.Conversation | None, request: gr.Request) -> tuple:
        opener = openers[index]
        if conv is not None:
            conv.opener_id = opener["id"]
            if store.conversation(conv.id):
                store.set_opener(conv.id, arena.session_of(request), opener["id"])
        follow_ups = "\n".join(f"{n}. {arena.safe_markdown(f)}" for n, f in enumerate(opener["follow_ups"], 1))
        return opener["prompt"], f"**Planned follow-ups** (adapt them to what each side said):\n\n{follow_ups}"

    def fill_rater(request: gr.Request) -> dict:
        user = getattr(request, "username", None)
        return gr.update(value=user, interactive=False) if user else gr.skip()

    def current_conversation(conv: arena.Conversation | None, request: gr.Request) -> dict:
        """The session's current conversation as stored: turn ids, texts, ratings, verdict (for API clients)."""
        record = store.conversation(conv.id) if conv is not None else None
        if record is None:
            return {"id": conv.id if conv else None, "turns": [], "ratings": {}, "verdict": None}
        if record["session"] != arena.session_of(request):
            raise gr.Error("this conversation does not belong to your session")
        turns = [
            {"turn_id": t.id, "side": t.side, "turn_index": t.turn_index, "attempt": t.attempt, "status": t.status}
            for t in store.turns(conv.id)
        ]
        return {"id": conv.id, "turns": turns, "ratings": store.ratings(conv.id), "verdict": record["verdict"]}

    def rate_by_id(turn_id: str, rating: str, rater_name: str, request: gr.Request) -> str:
        """API: rate a turn of one's own conversation by id (the server checks the id belongs to the session)."""
        try:
            caps.rate(keys(request))
        except limits.LimitReached as err:
            raise gr.Error(str(err)) from None
        try:
            store.rate(turn_id, rating, arena.session_of(request), arena.rater_of(rater_name, request))
        except (ratings.NotAllowed, ValueError) as err:
            raise gr.Error(str(err)) from None
        return "saved"

    # -- layout --------------------------------------------------------------------------------------------
    with gr.Blocks(title="LIMA multi-turn arena") as demo:
        conv = gr.State(None)
        side_states = [gr.State(arena.Side()), gr.State(arena.Side())]
        rate_keys = [gr.State(()), gr.State(())]
        judged = gr.State(False)  # the conversation has its verdict: its ratings are final

        gr.Markdown("# LIMA multi-turn arena\nTalk to both models, rate every answer, then say which was better.")
        status = gr.Markdown("Checking the models…", elem_id="status")
        with gr.Row():
            rater = gr.Textbox(label="Your name (rater)", placeholder="who is rating", scale=2, elem_id="rater")
            if os.environ.get("OAUTH_CLIENT_ID"):  # a Space with `hf_oauth: true`: raters sign in, names are theirs
                gr.LoginButton(scale=1)
            new_btn = gr.Button("New conversation", scale=1, elem_id="new-conversation")
        admin_token = gr.Textbox(label="Admin token", type="password", render=False, elem_id="admin-token")
        with gr.Tabs():
            with gr.Tab("Arena", id="arena"):
                gr.Markdown(arena.RATING_HELP)

                chats, labels, side_inputs, side_sends, again_btns = [], [], [], [], []
                with gr.Row(equal_height=False):
                    for i, s in enumerate(SIDES):
                        with gr.Column(elem_id=f"side-{s}"):
                            labels.append(gr.Markdown(arena.label(s, "", None), elem_id=f"label-{s}"))
                            chats.append(
                                gr.Chatbot(
                                    label=f"Model {s.upper()}",
                                    elem_id=f"chat-{s}",
                                    height=420,
                                    feedback_options=None,
                                    sanitize_html=True,
                                    allow_tags=False,
                                )
                            )
                            with gr.Row():
                                side_inputs.append(
                                    gr.Textbox(
                                        placeholder=f"Follow-up to {s.upper()} only",
                                        show_label=False,
                                        scale=4,
                                        elem_id=f"input-{s}",
                                        max_length=arena.MAX_MESSAGE_CHARS,
                                    )
                                )
                                side_sends.append(gr.Button(f"Send to {s.upper()}", scale=1, elem_id=f"send-{s}"))
                            again_btns.append(
                                gr.Button("↻ Regenerate", size="sm", interactive=False, elem_id=f"again-{s}")
                            )

                            @gr.render(inputs=[rate_keys[i], judged])
                            def rating_controls(keys: tuple, final: bool, s: str = s) -> None:
                                current = store.ratings_of([key[1] for key in keys])
                                for n, turn_id, opening in keys:
                                    radio = gr.Radio(
                                        list(ratings.RATINGS),
                                        value=current.get(turn_id),
                                        interactive=not final,
                                        label=f"{s.upper()} · turn {n}: “{opening}”",
                                        key=f"rate-{turn_id}",
                                        elem_classes=["turn-rating"],
                                        elem_id=f"rate-{s}-{n}",
                                    )
                                    radio.input(
                                        make_rate(turn_id),
                                        inputs=[radio, rater, conv],
                                        outputs=[*verdict_btns, verdict_note],
                                        api_visibility="private",
                                        concurrency_limit=None,
                                    )

                with gr.Row():
                    shared = gr.Textbox(
                        placeholder="Message to both models",
                        show_label=False,
                        scale=5,
                        elem_id="input-both",
                        max_length=arena.MAX_MESSAGE_CHARS,
                    )
                    send_both = gr.Button("Send to both", variant="primary", scale=1, elem_id="send-both")
                # Gradio's page runs the listeners of one trigger one after another, so "Send to both" clicks these
                # two (in the DOM, not shown): each side is then its own trigger and the two stream at once.
                fire = [gr.Button(visible="hidden", elem_id=f"fire-{s}") for s in SIDES]
                follow_ups = gr.Markdown("", elem_id="follow-ups")
                with gr.Row():
                    verdict_btns = [
                        gr.Button("A is better", interactive=False, elem_id="verdict-a"),
                        gr.Button("Tie", interactive=False, elem_id="verdict-tie"),
                        gr.Button("B is better", interactive=False, elem_id="verdict-b"),
                    ]
                verdict_note = gr.Markdown("", elem_id="verdict-note")
                if openers:
                    opener_list = gr.Dataset(
                        components=[gr.Textbox(visible=False)],
                        samples=[[f"{o['category']}: {o['prompt']}"] for o in openers],
                        label="Evaluation openers (click to use)",
                        type="index",
                        samples_per_page=10,
                        elem_id="openers",
                    )
                with gr.Accordion("Decoding (LIMA: top-p 0.9, temperature 0.7, repetition penalty 1.2)", open=False):
                    temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="temperature")
                    top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="top-p")
                    repetition_penalty = gr.Slider(1.0, 2.0, value=1.2, step=0.05, label="repetition penalty")
                    max_tokens = gr.Slider(
                        16, backends.TOTAL_TOKEN_BUDGET, value=max_new_tokens, step=16, label="max new tokens"
                    )

            with gr.Tab("Review", id="review", visible=review_open):
                review.layout(store, rater, enabled=review_open)
            with gr.Tab("Results", id="results", visible=admin.open, elem_id="tab-results") as results_tab:
                results.layout(store, admin, admin_token)
            if checkpoint_runs:
                with gr.Tab("Checkpoints", id="checkpoints"):
                    refresh, which, summary, epoch_box = checkpoints.layout(store, checkpoint_runs, rater)
                demo.load(refresh, inputs=[which], outputs=[summary, epoch_box], api_visibility="private")
        if admin.open:  # results are open to whoever runs the app: no token to ask for
            with gr.Column(visible=False):
                admin_token.render()
        else:
            with gr.Accordion("Admin", open=False):
                admin_token.render()
                unlock_btn = gr.Button("Show results", elem_id="admin-unlock")
                unlock_note = gr.Markdown("")

        # -- wiring ----------------------------------------------------------------------------------------
        decoding_inputs = [temperature, top_p, repetition_penalty, max_tokens, rater]
        reset_outputs = [
            conv, *side_states, *chats, *rate_keys, *labels, *verdict_btns, verdict_note, follow_ups, judged
        ]  # fmt: skip
        demo.load(new_conversation, outputs=reset_outputs, api_name="new_conversation")
        demo.load(probe, outputs=status, api_visibility="private")
        demo.load(fill_rater, outputs=rater, api_visibility="private")
        streams = []

        for i, s in enumerate(SIDES):
            outputs = [chats[i], side_states[i], rate_keys[i], again_btns[i]]
            inputs = [conv, side_states[i], *decoding_inputs]
            # One event per side and no concurrency cap: each side streams on its own.
            common = {"outputs": outputs, "concurrency_limit": None}
            streams += [
                fire[i].click(make_respond(s, False), inputs=[shared, *inputs], api_name=f"send_{s}", **common),
                side_sends[i].click(
                    make_respond(s, False), inputs=[side_inputs[i], *inputs], api_visibility="private", **common
                ),
                side_inputs[i].submit(
                    make_respond(s, False), inputs=[side_inputs[i], *inputs], api_visibility="private", **common
                ),
                again_btns[i].click(
                    make_respond(s, True), inputs=[side_inputs[i], *inputs], api_name=f"again_{s}", **common
                ),
            ]
            for trigger in (side_sends[i].click, side_inputs[i].submit):
                trigger(lambda: "", outputs=side_inputs[i], api_visibility="private")
        for trigger in (send_both.click, shared.submit):
            trigger(None, js=FIRE_BOTH)  # first: the sides start before the input is cleared
            trigger(lambda: "", outputs=shared, api_visibility="private")
        # A new conversation owns the page: the old one's running streams are cancelled (and told to stop).
        # The old stream may have had one chunk in flight past its `closed` check: the panes are drawn again from
        # the new conversation's state once the reset is done, so that chunk cannot stay on screen.
        new_btn.click(
            new_conversation, inputs=[conv], outputs=reset_outputs, api_visibility="private", cancels=streams
        ).then(
            lambda a, b: (arena.chat_messages(a), arena.chat_messages(b)),
            inputs=side_states,
            outputs=chats,
            api_visibility="private",
        )

        for button, verdict in zip(verdict_btns, ("a", "tie", "b"), strict=True):
            button.click(
                make_verdict(verdict),
                inputs=[conv, rater],
                outputs=[*labels, *verdict_btns, verdict_note, judged],
                api_name=f"verdict_{verdict}",
            )
        if openers:
            opener_list.click(
                pick_opener, inputs=[opener_list, conv], outputs=[shared, follow_ups], api_visibility="private"
            )
        if not admin.open:

            def unlock(token: str) -> tuple:
                if not admin.allows(token):
                    raise gr.Error("That is not the admin token.")
                return gr.update(visible=True), "Results unlocked for this page."

            unlock_btn.click(unlock, inputs=admin_token, outputs=[results_tab, unlock_note], api_visibility="private")
        # API-only endpoints (hidden components): the session's conversation as stored, and rating by turn id.
        api_btn = gr.Button(visible=False)
        api_btn.click(current_conversation, inputs=[conv], outputs=gr.JSON(visible=False), api_name="conversation")
        rate_inputs = [gr.Textbox(visible=False), gr.Textbox(visible=False), rater]
        api_btn.click(
            rate_by_id,
            inputs=rate_inputs,
            outputs=gr.Textbox(visible=False),
            api_name="rate",
            concurrency_limit=None,  # a rating is one short SQLite write; the store serialises them itself
            queue=False,
        )
    return demo


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = settings.parse(argv)
        sources = settings.resolve_sides(config)
    except settings.SettingsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    models = [backends.make_backend(src, concurrency=config.concurrency) for src in sources]
    local_on_cpu = any(isinstance(m, backends.LocalBackend) for m in models)
    max_new = config.max_new_tokens or (256 if local_on_cpu and not _cuda() else backends.TOTAL_TOKEN_BUDGET // 2)
    for model in models:  # load in-process models while the server starts
        if isinstance(model, backends.LocalBackend):
            threading.Thread(target=model.load, daemon=True).start()
    sides = zip(("left", "right"), models, strict=True)
    servers = [(where, m) for where, m in sides if isinstance(m, backends.RemoteBackend)]
    if servers:  # say at once whether each server answers (the page shows the same, refreshed per visit)
        statuses = asyncio.run(_probe_all([m for _, m in servers]))
        for (where, _), status in zip(servers, statuses, strict=True):
            (log.info if status.ok else log.warning)("%s: %s: %s", where, status.model, status.detail)
    try:
        store = ratings.Store(config.db, rate_every_turn=config.rate_every_turn)
    except (OSError, sqlite3.Error) as err:
        print(f"error: cannot open the ratings database {config.db}: {err}", file=sys.stderr)
        return 2
    if config.dataset_repo or config.mirror_dir:
        # Secrets come from the environment only (HF_TOKEN); a Space's disk is ephemeral, the dataset is not.
        folder = Path(config.mirror_dir or f"{config.db}.jsonl.d")
        token = os.environ.get("HF_TOKEN")
        if store.is_empty():
            restore(store, folder, config.dataset_repo, token)
        try:
            mirror.JsonlMirror(folder, store, repo_id=config.dataset_repo, token=token)
        except Exception as err:  # the Hub fails in many ways (network, token, repo); all mean the same here
            print(f"error: cannot use dataset repo {config.dataset_repo}: {str(err).splitlines()[0]}", file=sys.stderr)
            store.close()
            return 2
    public = is_public(config)
    review_open = config.review if config.review is not None else not public

    caps = caps_for(config, public)
    checkpoint_runs = None
    if config.checkpoints:
        try:
            checkpoint_runs = checkpoints.find_runs(config.checkpoints)
        except checkpoints.CheckpointError as err:
            print(f"error: {err}", file=sys.stderr)
            shut_down(store)
            return 2
    demo = build(
        models,
        store,
        blind=config.blind,
        turn_limit=config.turn_limit,
        max_new_tokens=max_new,
        admin=results.Admin(token=os.environ.get("LIMA_ARENA_ADMIN_TOKEN"), public=public),
        review_open=review_open,
        checkpoint_runs=checkpoint_runs,
        caps=caps,
    )
    demo.queue(default_concurrency_limit=8)
    stop_on_signals()
    try:
        demo.launch(
            server_name=config.host,
            server_port=config.port,
            share=config.share,
            footer_links=["api"],
            # the server's own latency per direct API route, at GET /lima-arena/timings (bench/ratings_load.py)
            app_kwargs={"middleware": [Middleware(timings.Timings, registry=timings.Registry())]},
        )
    except OSError as err:  # the port is taken, or the address is not this machine's
        reason = str(err).splitlines()[0].split(". ")[0]
        print(f"error: cannot listen on {config.host}:{config.port} ({reason}): pass a free --port", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the signal came while launch() was still starting (it checks its own server)
        demo.close()
    finally:
        shut_down(store)
    return 0


def restore(store: ratings.Store, folder: Path, repo_id: str | None, token: str | None) -> None:
    """A new database (a Space after a restart): rebuild it from the dataset repo's events, or from the mirror
    folder's, so the arena goes on where it stopped. Those events are already copied, so the mirror's bookmark
    moves past them. Failing that, the arena starts empty and says why; the events stay where they are."""
    sources = [s for s in (repo_id, folder if any(folder.glob("*.jsonl")) else None) if s]
    if not sources:
        return
    try:
        summary = mirror.rebuild(sources, store, token=token)
    except mirror.MirrorError as err:
        log.warning("starting with an empty database: %s", err)
        return
    store.set_mirror_cursor(str(folder.resolve()), store.last_event())
    log.info("%s", mirror.describe(summary))


def stop_on_signals() -> None:
    """SIGTERM (what Docker and Spaces send) and SIGINT both stop the server: launch() waits in the main thread
    until a KeyboardInterrupt, then closes it. SIGINT is set explicitly because a process started from a
    background job of a non-interactive shell begins with SIGINT ignored (POSIX)."""

    def interrupt(signum: int, frame: object) -> None:
        log.info("stopping on %s", signal.Signals(signum).name)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)


def shut_down(store: ratings.Store) -> None:
    """On the way out: push what the mirrors hold (the last minutes of ratings), then close the database."""
    for listener in store.listeners:
        stop = getattr(listener, "stop", None)
        if stop is not None:
            try:
                stop()
            except Exception as err:  # the Hub may be unreachable; the JSONL files and SQLite still hold it all
                log.warning("could not push the mirror at shutdown: %s", str(err).splitlines()[0] if str(err) else err)
    store.close()


def caps_for(config: settings.Settings, public: bool) -> limits.Limits:
    """The limits as set; one left unset is off locally and takes its public default when public (0: off)."""

    def cap(value: int | None, name: str) -> int | None:
        return limits.PUBLIC_DEFAULTS[name] if value is None and public else (value or None)

    return limits.Limits(
        turns_per_hour=cap(config.max_turns_per_hour, "turns_per_hour"),
        ratings_per_minute=cap(config.max_ratings_per_minute, "ratings_per_minute"),
        tokens_per_hour=cap(config.max_tokens_per_hour, "tokens_per_hour"),
    )


def is_public(config: settings.Settings) -> bool:
    """Decided once: on a Space, with a share link, or listening beyond this machine, strangers can reach the
    page, so results and exports need the admin token and Review is off unless enabled."""
    loopback = config.host in ("127.0.0.1", "localhost", "::1")
    return bool(os.environ.get("SPACE_ID")) or bool(config.share) or not loopback


async def _probe_all(models: list) -> list[backends.Status]:
    return await asyncio.gather(*(m.probe() for m in models))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
