"""Is a saved model directory what DESIGN.md's contract 2 promises? One function, used by the tests and by
bench/gpu_check.py on the folders a GPU run wrote.

It reloads the folder with AutoTokenizer / AutoModelForCausalLM, checks the serving template sits where TGI
reads it (tokenizer_config.json) and renders LIMA's format, that EOT is the first stop id, that config.json
names the dtype the weights are stored in, and that generation ends at EOT by itself: a random or barely
trained model is made to say EOT by its third token (a sequence bias), and generate must stop there.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from finetune import chat_format

PROMPT = [{"role": "user", "content": "Name a prime."}]


def check_servable(path: Path, device: str = "cpu") -> list[str]:
    """The problems found in the model folder `path`; an empty list when it is servable."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    problems = []
    config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    if config.get("chat_template") != chat_format.SERVING_TEMPLATE:
        problems.append("tokenizer_config.json does not carry the serving template")
    declared = json.loads((path / "config.json").read_text(encoding="utf-8")).get("dtype")
    for weights in sorted(path.glob("*.safetensors")):
        with safe_open(weights, "pt") as saved:
            stored = {str(saved.get_slice(key).get_dtype()) for key in saved.keys()}  # noqa: SIM118 (not a dict)
        if stored - {_safetensors_name(declared)}:
            problems.append(f"{weights.name} stores {sorted(stored)}, config.json says {declared}")

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).to(device).eval()
    eot = tokenizer.convert_tokens_to_ids(chat_format.EOT)
    stops = model.generation_config.eos_token_id
    if not isinstance(stops, list) or stops[0] != eot:
        problems.append(f"generation_config.json eos_token_id {stops} does not start with EOT ({eot})")
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
