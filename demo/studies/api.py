"""What a study's page (or an API client) calls, without Gradio: the next item for a rater's session, and a rating.

Each returns plain JSON-able dicts; a refusal is ``ratings.NotAllowed`` (an item not handed to the session) or
``ValueError`` (a value off the study's scale), each one sentence the page shows as it is. The session is the
server's (``demo.clients``), never one the client chose; the blind order is the store's (``store.next_item``).
"""

from __future__ import annotations

import random

from demo.protocol import RATINGS, SAFETY, VERDICTS
from demo.ratings import Store
from demo.studies import store as studies

# What a rater chooses from, per study kind (pairwise: as shown, "a" being the answer on the left).
CHOICES = {"pairwise": VERDICTS, "absolute": RATINGS, "safety": SAFETY}


def progress(store: Store, name: str, session: str) -> dict:
    """How many of the study's items this session rated, of how many there are."""
    rated = store._one("SELECT COUNT(*) FROM study_ratings WHERE study = ? AND session = ?", (name, session))[0]
    with store._lock:
        total = len(studies.items(store._db, name))
    return {"rated": int(rated), "total": total}


def next_item(store: Store, name: str, session: str, rater: str, rng: random.Random | None = None) -> dict:
    """The item to show now (the same one, in the same order, until it is rated), or ``item: None`` when this
    session has rated them all."""
    study = studies.study(store, name)
    shown = studies.next_item(store, name, session, rater, rng)
    item = None
    if shown is not None:
        item = {"id": shown.id, "prompt": shown.prompt, "answers": list(shown.answers)}
    return {"study": name, "kind": study.kind, "choices": list(CHOICES[study.kind]), "item": item,
            **progress(store, name, session)}  # fmt: skip


def rate_item(
    store: Store, name: str, session: str, rater: str, item: str, value: str, declined: bool | None = None
) -> dict:
    """Store the rating of an item handed to this session, then what to show next (as ``next_item``)."""
    shown = studies.shown(store, session, item)
    if shown.study != name:
        raise ValueError(f"this item belongs to study {shown.study!r}, not {name!r}")
    studies.rate(store, item, session, rater, value, declined)
    return next_item(store, name, session, rater)
