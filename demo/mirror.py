"""A second home for ratings: append-only JSONL files, pushed to a Hub dataset repo by ``CommitScheduler``.

A Space's disk is ephemeral, so the SQLite store alone would lose everything at the next restart. When a dataset
repo is configured, every acknowledged rating and verdict is also appended (and fsynced) to a JSONL file of
this process's own (``ratings-<uuid>.jsonl``: one file per process, so two replicas never write the same file),
and ``huggingface_hub.CommitScheduler`` uploads the folder every few minutes. The append happens after the
SQLite commit and before the UI acknowledges the rating. Without a repo it still writes the files (a local
audit trail); the upload is the only part that needs the Hub.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from pathlib import Path

log = logging.getLogger(__name__)


class JsonlMirror:
    """A ``Store`` listener: ``store.listeners.append(JsonlMirror(folder, repo_id=...))``."""

    def __init__(
        self, folder: str | Path, repo_id: str | None = None, token: str | None = None, every_minutes: float = 5
    ) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / f"ratings-{uuid.uuid4().hex}.jsonl"
        self.scheduler = None
        if repo_id:
            from huggingface_hub import CommitScheduler

            self.scheduler = CommitScheduler(
                repo_id=repo_id,
                repo_type="dataset",
                folder_path=self.folder,
                path_in_repo="ratings",
                every=every_minutes,
                private=True,
                token=token,
                allow_patterns=["*.jsonl"],
            )
        # The scheduler reads the folder under its lock while uploading; appends take the same lock.
        self.lock = self.scheduler.lock if self.scheduler else threading.Lock()

    def __call__(self, kind: str, record: dict) -> None:
        line = json.dumps({"kind": kind, **record}, ensure_ascii=False)
        with self.lock, self.path.open("a", encoding="utf-8") as out:
            out.write(line + "\n")
            out.flush()
            os.fsync(out.fileno())

    def stop(self) -> None:
        """Push what is left (on shutdown)."""
        if self.scheduler is not None:
            self.scheduler.trigger().result()
            self.scheduler.stop()
