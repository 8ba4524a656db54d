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

import contextlib

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

    Mean initialisation (the average of the rows the base trained) puts the new row where the model's hidden
    states already live, so its first logits are neither huge nor negligible (Hewitt, "Initializing New Word
    Embeddings for Pretrained Language Models", 2021). It applies whether or not the matrix grows: bases whose
    embedding matrix is padded past the tokenizer (Qwen-style, rounded up to a multiple of 64 or 128) give EOT
    one of those padding rows, which the base never trained. A base that already has EOT (a model of ours
    trained again) keeps its trained row.
    """
    new = EOT not in tokenizer.get_vocab()
    trained_rows = len(tokenizer)  # the tokenizer's vocabulary; rows past it are padding the base never saw
    if new:
        tokenizer.add_special_tokens({"additional_special_tokens": [EOT]})
    eot_id = tokenizer.convert_tokens_to_ids(EOT)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or EOT
    tokenizer.chat_template = CHAT_TEMPLATE

    if eot_id >= model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(eot_id + 1, mean_resizing=False)
    if new:
        matrices = [model.get_input_embeddings().weight]
        output = model.get_output_embeddings()
        if output is not None and output.weight is not matrices[0]:  # untied head: initialise it the same way
            matrices.append(output.weight)
        with _gathered(matrices), torch.no_grad():
            for weight in matrices:
                rows = min(trained_rows, eot_id, weight.shape[0])
                weight[eot_id] = weight[:rows].mean(dim=0)

    stop = [eot_id]
    base_eos = model.generation_config.eos_token_id
    for token in base_eos if isinstance(base_eos, list) else [base_eos]:
        if token is not None and token not in stop:
            stop.append(token)  # the base's EOS still ends generation should the model emit it
    model.generation_config.eos_token_id = stop
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    return eot_id


def _gathered(weights):
    """Under DeepSpeed ZeRO-3 (zero3_init_flag) each process holds a slice of every weight: gather the full
    matrices for the edit, made on rank 0 and partitioned again on exit. Anywhere else the weights are whole.
    (Under FSDP's CPU-RAM-efficient loading the other ranks hold meta tensors: the edit is a no-op there and
    FSDP broadcasts rank 0's rows.)"""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        import deepspeed

        return deepspeed.zero.GatheredParameters(weights, modifier_rank=0)
    return contextlib.nullcontext()
