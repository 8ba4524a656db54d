"""LIMA's conversation format: every utterance ends with a new end-of-turn (EOT) token.

The paper adds EOT rather than reusing the base model's EOS, "to avoid conflation with any other meaning that
the pretrained model may have imbued into the preexisting EOS token". Generation stops at EOT. The chat
template below is saved with every model (DESIGN.md, contract 2), so TGI's /v1/chat/completions renders
exactly what training saw; `{% generation %}` marks the tokens that carry the loss (assistant text + EOT).

Role headers are plain text, which any base model already reads; only EOT is new.

Saved models carry SERVING_TEMPLATE: the same template without the `{% generation %}` markers, which render
nothing but are unknown to TGI's template engine (minijinja), where they would stop the server at start-up.
"""

from __future__ import annotations

import torch

EOT = "<|end_of_turn|>"

CHAT_TEMPLATE = (
    "{{- bos_token if bos_token else '' -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- 'User:\\n' + message['content'] + '" + EOT + "\\n' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- 'Assistant:\\n' -}}"
    "{%- generation -%}{{- message['content'] + '" + EOT + "' -}}{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- raise_exception('LIMA format: roles are user and assistant, got ' + message['role']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'Assistant:\\n' -}}{%- endif -%}"
)

SERVING_TEMPLATE = CHAT_TEMPLATE.replace("{%- generation -%}", "").replace("{%- endgeneration -%}", "")


def add_end_of_turn(model, tokenizer) -> int:
    """Add EOT to the tokenizer and the model (mean-initialised), install the template; return EOT's id.

    Mean initialisation (the average of the existing embeddings) puts the new row where the model's hidden
    states already live, so its first logits are neither huge nor negligible (Hewitt, "Initializing New Word
    Embeddings for Pretrained Language Models", 2021).
    """
    if EOT not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [EOT]})
    eot_id = tokenizer.convert_tokens_to_ids(EOT)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or EOT
    tokenizer.chat_template = CHAT_TEMPLATE

    embeddings = model.get_input_embeddings()
    old_rows = embeddings.weight.shape[0]
    if eot_id >= old_rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            input_rows = model.get_input_embeddings().weight
            input_rows[old_rows:] = input_rows[:old_rows].mean(dim=0, keepdim=True)
            output = model.get_output_embeddings()
            if output is not None and output.weight is not input_rows:  # untied head: initialise it the same way
                output.weight[old_rows:] = output.weight[:old_rows].mean(dim=0, keepdim=True)

    stop = [eot_id]
    base_eos = model.generation_config.eos_token_id
    for token in base_eos if isinstance(base_eos, list) else [base_eos]:
        if token is not None and token not in stop:
            stop.append(token)  # the base's EOS still ends generation should the model emit it
    model.generation_config.eos_token_id = stop
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    return eot_id
