"""Is a saved model directory what DESIGN.md's contract 2 promises? Used at every servable save, by
`python -m finetune check-served DIR`, by the tests and by bench/gpu_check.py.

`check_files` reads the folder without loading weights: the chat template sits where TGI reads it
(tokenizer_config.json), renders a multi-turn conversation byte for byte the same in transformers (Jinja2, as
training, vLLM and transformers serve render it) and in minijinja configured as TGI's router configures it,
config.json names the dtype the weights are stored in, and, for a LIMA model (its tokenizer has EOT), the
template is our serving template and EOT the first stop id. `check_generation`
loads the model and sees generation end at EOT by itself: a random or barely trained model is made to say EOT
by its third token (a sequence bias), and generate must stop there.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from finetune import chat_format

PROMPT = [{"role": "user", "content": "Name a prime."}]
# A conversation as the arena sends it: several turns, Markdown, quotes, a trailing space, non-ASCII text.
CONVERSATION = [
    {"role": "user", "content": 'Name a prime, and say why it\'s prime.\n\n- one line\n- "quoted" '},
    {"role": "assistant", "content": "**Seven**: its only divisors are 1 and 7.\n\n```python\nprint(7)\n```"},
    {"role": "user", "content": "Et un nombre pair ? ½ ≠ 2 — 😀"},
]
# TGI >= 3.3 deletes these exact strings from a template before compiling it (router, chat_template.rs), so
# templates that mark assistant text for assistant-only loss still load there.
TGI_DELETES = ("{% generation %}", "{% endgeneration %}")


def check_servable(path: Path, device: str = "cpu") -> list[str]:
    """The problems found in the model folder `path`; an empty list when it is servable.

    After the files, the model is loaded and every weight must load under its own name: a missing, left-over
    or misshapen one (a renamed key) would be replaced by random values, and generation would still end at
    EOT, since it is made to. Then generation must end at EOT."""
    from transformers import AutoModelForCausalLM

    problems = check_files(path)
    if problems:
        return problems
    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    found = {
        "missing": info["missing_keys"],
        "unexpected": info["unexpected_keys"],
        "of another shape": {key[0] if isinstance(key, tuple) else key for key in info["mismatched_keys"]},
    }
    named = [
        f"{kind} {', '.join(sorted(keys)[:3])}{' ...' if len(keys) > 3 else ''}" for kind, keys in found.items() if keys
    ]
    if named:
        return [f"the saved weights do not match the model's: {'; '.join(named)}"]
    return check_generation(path, device, model)


def render_like_tgi(template: str, messages: list[dict], bos_token: str | None, eos_token: str | None) -> str:
    """Render a chat template as TGI 3.3's router does (router/src/infer/chat_template.rs): minijinja with
    minijinja-contrib's pycompat methods (.strip(), .upper(), ...), `raise_exception` and `strftime_now`, no
    trim_blocks / lstrip_blocks, the router's inputs (``tgi_inputs``), and a last assistant message continued.
    PyPI's minijinja wraps the same Rust engine (2.9 here, TGI 3.3 builds with 2.8), but built with
    `preserve_order` (minijinja-py/Cargo.toml; no option turns it off), so the inputs go in with their keys
    sorted. A mapping written in the template itself keeps its written order here and is sorted on TGI."""
    import time

    import minijinja

    def raise_exception(message: str) -> str:
        raise ValueError(message)

    def strftime_now(fmt: str) -> str:
        return time.strftime(fmt)

    # The router's rewrites before compiling (chat_template.rs @ db931fc, lines 39-52).
    template = template.replace("messages[0]['content'][0]['text']", "messages[0]['content']")
    template = template.replace("[::-1]", "|reverse")
    for tag in TGI_DELETES:
        template = template.replace(tag, "")
    env = minijinja.Environment(pycompat=True, keep_trailing_newline=False)
    env.add_function("raise_exception", raise_exception)
    env.add_function("strftime_now", strftime_now)
    rendered = env.render_str(template, **tgi_inputs(messages, bos_token, eos_token))
    last = messages[-1] if messages else {}
    if last.get("role") == "assistant":  # continued, not closed (chat_template.rs, after render)
        content = last.get("content") or ""
        at = rendered.rfind(content)
        rendered = rendered[: at + len(content)].rstrip() if at >= 0 else rendered
    return rendered


def tgi_inputs(messages: list[dict], bos_token: str | None, eos_token: str | None) -> dict:
    """What the router hands the template (lib.rs ``ChatTemplateInputs``). Every message is a ``TextMessage``:
    its role and its content, nothing else (``tool_call_id`` is never set on this route); `tools`
    is always there, none when the request sends none, so `tools is defined` holds; and TGI's minijinja is built
    without `preserve_order`, so a struct's fields, like any mapping's keys, iterate and serialise sorted
    (``{{ messages[0]|tojson }}`` is ``{"content":...,"role":...}``)."""
    return {
        "messages": [{"content": m["content"], "role": m["role"]} for m in messages],
        "bos_token": bos_token,
        "eos_token": eos_token,
        "add_generation_prompt": True,
        "tools": None,
    }


def check_template(tokenizer, config: dict) -> list[str]:
    """The saved template (`config`: tokenizer_config.json, as TGI reads it) must render the same bytes in
    transformers (`tokenizer`, loaded from the same folder) and in TGI's engine."""
    template = config.get("chat_template")
    if not isinstance(template, str):
        return ["tokenizer_config.json has no chat_template (TGI answers 422 template_error without one)"]
    try:
        expected = tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # the template's own error, e.g. its raise_exception
        return [f"transformers (Jinja2) cannot render the chat template: {str(exc).splitlines()[0]}"]

    def token(name: str) -> str | None:
        value = config.get(name)
        return value.get("content") if isinstance(value, dict) else value

    try:
        served = render_like_tgi(template, CONVERSATION, token("bos_token"), token("eos_token"))
    except Exception as exc:  # the engine's own error: the template would not render on TGI at all
        return [f"TGI's template engine (minijinja) cannot render the chat template: {str(exc).splitlines()[0]}"]
    if served == expected:
        return []
    at = next(
        (i for i, (a, b) in enumerate(zip(served, expected, strict=False)) if a != b), min(len(served), len(expected))
    )
    return [
        f"the chat template renders differently on TGI (minijinja) from transformers (Jinja2) at character {at}: "
        f"{served[at : at + 30]!r} instead of {expected[at : at + 30]!r}"
    ]


def check_files(path: Path) -> list[str]:
    """What a server reads, checked without loading the weights."""
    from safetensors import safe_open
    from transformers import AutoTokenizer, GenerationConfig

    path = Path(path)
    missing = [name for name in ("config.json", "tokenizer_config.json") if not (path / name).is_file()]
    if missing:
        return [f"not a saved model folder: no {' or '.join(missing)}"]
    tokenizer = AutoTokenizer.from_pretrained(path)
    ours = chat_format.EOT in tokenizer.get_vocab()  # a LIMA model of ours: its own contract applies too
    config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    problems = check_template(tokenizer, config)
    if ours and config.get("chat_template") != chat_format.SERVING_TEMPLATE:
        problems.append("tokenizer_config.json does not carry the serving template")
    declared = json.loads((path / "config.json").read_text(encoding="utf-8")).get("dtype")
    for weights in sorted(path.glob("*.safetensors")):
        with safe_open(weights, "pt") as saved:
            stored = {str(saved.get_slice(key).get_dtype()) for key in saved.keys()}  # noqa: SIM118 (not a dict)
        if stored - {_safetensors_name(declared)}:
            problems.append(f"{weights.name} stores {sorted(stored)}, config.json says {declared}")
    if not ours:
        return problems
    if not (path / "generation_config.json").is_file():
        return [*problems, "no generation_config.json: servers would not stop at EOT"]
    eot = tokenizer.convert_tokens_to_ids(chat_format.EOT)
    stops = GenerationConfig.from_pretrained(path).eos_token_id
    if not isinstance(stops, list) or stops[0] != eot:
        problems.append(f"generation_config.json eos_token_id {stops} does not start with EOT ({eot})")
    return problems


def check_generation(path: Path, device: str = "cpu", model=None) -> list[str]:
    """Load the model (unless given, loaded from `path`) and see generation end at EOT by itself."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    problems = []
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = (model or AutoModelForCausalLM.from_pretrained(path)).to(device).eval()
    eot = tokenizer.convert_tokens_to_ids(chat_format.EOT)
    prompt = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    if not prompt.endswith("User:\nName a prime." + chat_format.EOT + "\nAssistant:\n"):
        problems.append(f"the template renders {prompt[-60:]!r}")

    ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ids = {key: value.to(device) for key, value in ids.items()}
    start = ids["input_ids"].shape[1]
    with torch.no_grad():
        free = model.generate(**ids, max_new_tokens=2, do_sample=False)
        bias = {(*tuple(free[0, start:].tolist()), eot): 1e4}
        new = model.generate(**ids, max_new_tokens=20, do_sample=False, sequence_bias=bias)[0, start:].tolist()
    # (a model may say EOT sooner by itself; it must stop at the first one, and by the third token)
    if new[-1:] != [eot] or new.count(eot) != 1 or len(new) > 3:
        problems.append(f"generation did not stop at EOT by itself: {new}")
    return problems


def _safetensors_name(dtype: str | None) -> str:
    """config.json's dtype ('bfloat16') as safetensors names it ('BF16')."""
    return {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}.get(str(dtype), str(dtype))
