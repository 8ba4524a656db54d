"""The servers a side can talk to, as data: one ``ServerKind`` per kind in ``KINDS``.

An entry says how the probe recognises that server from what it answers (``Probe``), how the paper's decoding
(top-p 0.9, temperature 0.7, a repetition penalty of 1.2) is said in that server's own request fields, read from
its source (``terms``), what the penalty covers there, and the name a rater sees. ``RemoteBackend``
(``serving/servers.py``) holds no server's name: a new kind is one entry here (before ``OPENAI``, which
recognises anything) and its look-alike in tests/ (``tests/tgi_server.py``'s ``Behaviour.server``, or the real
server, as ``tests/transformers_server.py`` runs ``transformers serve``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from serving.decoding import PENALTY_SCOPE, Decoding


@dataclass(frozen=True)
class Probe:
    """What a server answered to the probe's GETs (None: not 200, or not JSON)."""

    info: object = None  # GET /info
    health: object = None  # GET /health
    version: object = None  # GET /version
    models: object = None  # GET /v1/models

    def served(self) -> list[dict]:
        """The ``/v1/models`` entries that name a model."""
        listed = self.models.get("data", []) if isinstance(self.models, dict) else []
        return [m for m in listed if isinstance(m, dict) and m.get("id")]

    def server_version(self) -> str | None:
        for answer in (self.info, self.version):
            if isinstance(answer, dict) and "version" in answer:
                return str(answer["version"])
        return None


@dataclass(frozen=True)
class ServerKind:
    name: str  # what a turn records (``decoding_record``'s "server") and ``RemoteBackend.kind`` says
    shown: str  # the name in a side's status line
    recognise: Callable[[Probe], bool]
    terms: Callable[[Decoding, str | None], dict]  # the request fields for a decoding and the request's model
    penalty_field: str  # the field ``terms`` says the repetition penalty in (for the status line)
    penalty_scope: str = PENALTY_SCOPE  # what the penalty covers there; "unknown" where no source says
    may_ignore: tuple[str, ...] = ()  # fields sent that the server may drop silently
    # True: the request's ``model`` is a LoRA adapter id on the served base (the base: none), and the served
    # model is the one /info names. False: ``model`` names one of the served models (/v1/models).
    model_is_adapter: bool = False
    source: str = field(default="", compare=False)  # where ``terms`` was read


def _sampling(decoding: Decoding, model: str | None) -> dict:
    """The OpenAI fields every kind but TGI takes as they are; ``model`` first when there is one."""
    body = {"model": model} if model else {}
    return {**body, "max_tokens": decoding.max_new_tokens, "temperature": max(decoding.temperature, 0.0)}


def tgi_terms(decoding: Decoding, model: str | None) -> dict:
    # The chat route has no repetition_penalty field and drops unknown ones (ChatRequest::try_into_generate,
    # lib.rs lines 941-1040); line 960 is the only way to set it:
    #     let repetition_penalty = presence_penalty.map(|x| x + 2.0);
    # and it is applied over prompt + generated ids (server/.../flash_causal_lm.py:2005, all_input_ids_tensor).
    # `temperature: 0` is greedy (966-970); top_p must be < 1.0 (validation.rs:258-264), so 1.0 is left out.
    # `model` is a LoRA adapter id unless it is "tgi" (lib.rs:1031).
    body = {
        "model": model or "tgi",
        "max_tokens": decoding.max_new_tokens,
        "temperature": max(decoding.temperature, 0.0),
        "presence_penalty": round(decoding.repetition_penalty - 2.0, 6),
    }
    if decoding.top_p < 1.0:
        body["top_p"] = decoding.top_p
    return body


def vllm_terms(decoding: Decoding, model: str | None) -> dict:
    # vLLM reads repetition_penalty at the top level of the body (not in the OpenAI schema) and fills every field
    # a request leaves out from the model's generation_config.json (to_sampling_params, "user -> server
    # default"): name top_k and min_p too, so a base model's defaults do not narrow the nucleus. Its penalty
    # covers prompt and output tokens (model_executor/layers/utils.py apply_repetition_penalties).
    return {**openai_terms(decoding, model), "top_k": 0, "min_p": 0.0}


def transformers_terms(decoding: Decoding, model: str | None) -> dict:
    # Unknown body fields are a 422 (utils.py _validate_request); frequency_penalty becomes generate's
    # repetition_penalty as 1 + value (chat_completion.py _build_generation_config); a positive temperature does
    # not turn sampling on unless the generation config says so, and `generation_config` (a JSON string) is how
    # to say it, with top_k 0 for the paper's pure nucleus. generate applies the penalty over the whole input.
    return {
        **_sampling(decoding, model),
        "top_p": decoding.top_p,
        "frequency_penalty": round(decoding.repetition_penalty - 1.0, 6),
        "generation_config": json.dumps({"do_sample": not decoding.greedy, "top_k": 0}),
    }


def openai_terms(decoding: Decoding, model: str | None) -> dict:
    # Not in the OpenAI schema: vLLM and SGLang read repetition_penalty at the top level of the body; a server of
    # unknown make may drop it (``may_ignore``).
    return {**_sampling(decoding, model), "top_p": decoding.top_p, "repetition_penalty": decoding.repetition_penalty}


TGI = ServerKind(
    name="tgi",
    shown="TGI",
    # TGI's /info (router/src/lib.rs, Info) is the only one with both.
    recognise=lambda probe: isinstance(probe.info, dict) and {"max_total_tokens", "model_id"} <= probe.info.keys(),
    terms=tgi_terms,
    penalty_field="presence_penalty",
    model_is_adapter=True,
    source="huggingface/text-generation-inference 3.3 @ db931fc: router/src/lib.rs, router/src/validation.rs",
)
VLLM = ServerKind(
    name="vllm",
    shown="vLLM",
    recognise=lambda probe: isinstance(probe.version, dict) and "version" in probe.version,  # GET /version
    terms=vllm_terms,
    penalty_field="repetition_penalty",
    source="vllm-project/vllm: entrypoints/openai/chat_completion/protocol.py, model_executor/layers/utils.py",
)
TRANSFORMERS = ServerKind(
    name="transformers",
    shown="transformers serve",
    # cli/serving/server.py's /health, or model_manager.py's list_models (models with a status).
    recognise=lambda probe: probe.health == {"status": "ok"} or any("status" in m for m in probe.served()),
    terms=transformers_terms,
    penalty_field="frequency_penalty",
    source="huggingface/transformers 5.x: cli/serving/utils.py, cli/serving/chat_completion.py",
)
OPENAI = ServerKind(
    name="openai",
    shown="OpenAI-compatible server",
    recognise=lambda probe: True,
    terms=openai_terms,
    penalty_field="repetition_penalty",
    penalty_scope="unknown",
    may_ignore=("repetition_penalty",),
    source="the OpenAI chat completions API",
)
# In the order the probe tries them: the first that recognises a server is its kind.
KINDS = (TGI, VLLM, TRANSFORMERS, OPENAI)


def recognise(probe: Probe) -> ServerKind:
    return next(kind for kind in KINDS if kind.recognise(probe))


def kind_named(name: str | None) -> ServerKind:
    """The kind a backend learnt; one not probed yet (None) is spoken to as an OpenAI-compatible server."""
    return next((kind for kind in KINDS if kind.name == name), OPENAI)
