"""The real ``transformers serve`` (transformers' own OpenAI-compatible server, ``transformers[serving]``) on a
free loopback port, for tests and benchmarks.

Started as a user would start it, offline, with an empty ``HF_HOME`` so ``/v1/models`` lists only what it loaded,
and stopped with SIGTERM (uvicorn's graceful shutdown; it waits for open streams, so close them first).
Unpinned (no model on the command line) it loads whatever a request's ``model`` names: a local folder, as the
arena's ``URL#folder`` source asks for one.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tgi_server import free_port


def command() -> list[str] | None:
    """How to start it from this interpreter's environment, or None when transformers[serving] is missing."""
    script = Path(sys.executable).with_name("transformers")
    try:
        import fastapi  # noqa: F401
        import openai  # noqa: F401  (transformers serve refuses to start without it)
        import uvicorn  # noqa: F401
    except ImportError:
        return None
    return [str(script)] if script.exists() else None


class TransformersServe:
    """``with TransformersServe() as server: server.url``; ``pinned`` passes a model folder on the command line."""

    def __init__(self, pinned: Path | None = None, startup_s: float = 120.0) -> None:
        self.pinned = pinned
        self.startup_s = startup_s
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._home = Path(tempfile.mkdtemp(prefix="tserve-home-"))
        self.log_path = self._home / "server.log"
        self.proc: subprocess.Popen | None = None
        self.started_in_s: float | None = None

    def start(self) -> TransformersServe:
        argv = command()
        if argv is None:
            raise RuntimeError("transformers serve needs transformers[serving] (pip install 'transformers[serving]')")
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_UPDATE_CHECK": "1",  # else the CLI asks PyPI for a newer release at start
            "HF_HOME": str(self._home),
            "TOKENIZERS_PARALLELISM": "false",
        }
        args = [*argv, "serve", *([str(self.pinned)] if self.pinned else [])]
        args += ["--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu", "--log-level", "info"]
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        while time.monotonic() - started < self.startup_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as response:
                    if response.status == 200:
                        self.started_in_s = time.monotonic() - started
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"transformers serve did not answer /health within {self.startup_s:g} s")

    def log_tail(self, chars: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        shutil.rmtree(self._home, ignore_errors=True)

    def __enter__(self) -> TransformersServe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
