"""Train LIMA's zero-shot model (lima-1000) and dialogue model (lima-1030) from one base.

Read top to bottom: `train` loads the data once and trains each model with `train_model`, which, in the
order of the alignment-handbook's scripts/sft.py,
  1. builds the training arguments, which start the distributed state (one process, DDP, FSDP or DeepSpeed
     as `accelerate launch` / `torchrun` set it up), so the batch is split over the real world size and the
     engines' loading options (FSDP's CPU-RAM-efficient loading, ZeRO-3's sharded init) apply to the model,
  2. lets the main process claim the run directory while the others wait for its answer,
  3. loads the base and adds the end-of-turn token (chat_format.py) and residual dropout (residual_dropout.py),
  4. renders every example with the chat template and masks the loss to assistant turns + EOT,
     truncating at max_length and dropping examples left with no assistant token,
  5. hands everything to TRL's SFTTrainer with the recipe's optimiser, schedule, batch and length grouping,
  6. saves a servable model directory (DESIGN.md, contract 2) at the end of each epoch in the keep window,
     through the trainer's own save path (every process takes part; the main process alone writes), and
     names the chosen one in `selected`.
Only what LIMA adds is written here; the training loop, collator, optimiser and scheduler are the libraries'.
"""

from __future__ import annotations

import copy
import json
import logging
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback
from transformers.optimization import get_polynomial_decay_schedule_with_warmup
from trl import SFTConfig, SFTTrainer

from common.cli import UserError
from finetune import chat_format
from finetune.base_models import resolve_base
from finetune.data import DIALOGUES_DIR, Example, TrainingSets, fingerprint, load_training_sets
from finetune.recipe import Recipe
from finetune.residual_dropout import add_residual_dropout
from finetune.servable import check_files
from serving.folder import SELECTED

log = logging.getLogger(__name__)

MODEL_DIRS = {"zero-shot": "lima-1000", "dialogue": "lima-1030"}
RUN_FILE = "run.yaml"


# ------------------------------------------------------------------------------------------- the data


@dataclass
class Encoded:
    rows: list[dict[str, Any]]  # input_ids, labels (-100 outside assistant turns + EOT), length before the cut
    dropped: int  # examples left with no assistant token by the cut


def encode(examples: list[Example], tokenizer, max_length: int) -> Encoded:
    """Render each example with the training template; labels keep assistant tokens + EOT only."""
    rows, dropped = [], 0
    for example in examples:
        rendered = tokenizer.apply_chat_template(
            example.messages,
            chat_template=chat_format.CHAT_TEMPLATE,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        ids = list(rendered["input_ids"])
        full = len(ids)
        labels = [token if keep else -100 for token, keep in zip(ids, rendered["assistant_masks"], strict=True)]
        ids, labels = ids[:max_length], labels[:max_length]
        if all(label == -100 for label in labels):  # nothing left to learn from
            dropped += 1
            continue
        rows.append({"input_ids": ids, "labels": labels, "multi_turn": example.user_turns > 1, "length": full})
    return Encoded(rows, dropped)


def choose(rows: list[dict[str, Any]], single_turn: int | None, dialogues: int | None) -> list[dict[str, Any]]:
    """Quick presets train on the N shortest examples of each kind (by length before truncation)."""

    def pick(kind: list[dict[str, Any]], n: int | None) -> list[dict[str, Any]]:
        if n is None:
            return kind
        return sorted(kind, key=lambda row: row["length"])[:n]

    return pick([r for r in rows if not r["multi_turn"]], single_turn) + pick(
        [r for r in rows if r["multi_turn"]], dialogues
    )


# ---------------------------------------------------------------------------------------- the trainer


class LimaTrainer(SFTTrainer):
    """SFTTrainer with LIMA's schedule landing exactly on its final rate, and the plain LM head on CPUs.

    transformers' polynomial schedule reaches lr_end only after the last step; decaying over one step fewer
    makes the first step use learning_rate and the last step final_learning_rate, linear between.
    """

    eot_lr_scale: float = 1.0  # LoRA presets: how much faster the new EOT row learns than the adapters

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # TRL scores tokens with a fused, chunked LM head that saves GPU memory; on CPUs it runs ~2.4x slower
        # than the plain head (66 vs 157 tokens/s for Gemma 3 270M here), so CPU runs use transformers' loss.
        if self.args.device.type == "cpu":
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if self.eot_lr_scale != 1.0:
            # A LoRA preset's new EOT row starts from the mean embedding and gets one training signal per
            # assistant turn; a few dozen CPU steps at the adapters' rate leave it unpredictable, so it moves faster.
            rows = [p for n, p in self.model.named_parameters() if "trainable_tokens_delta" in n and p.requires_grad]
            for group in optimizer.param_groups:
                group["params"] = [p for p in group["params"] if all(p is not row for row in rows)]
            # No weight decay on it: at this rate, decoupled decay would shrink the row by 1% a step.
            optimizer.add_param_group(
                {"params": rows, "lr": self.args.learning_rate * self.eot_lr_scale, "weight_decay": 0.0}
            )
        return optimizer

    serving_dtype: torch.dtype | None = None  # set by save_servable for the length of one servable save

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # save_model gathers the weights as its engine needs (FSDP full state dict, ZeRO-3 16-bit
        # consolidation, plain state dict) and ends here on the writing process. Master weights stay fp32 for
        # training; a servable copy is written in the run's precision. Resume checkpoints pass through untouched.
        if self.serving_dtype is None:
            return super()._save(output_dir, state_dict)
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if state_dict is None:
            state_dict = model.state_dict()
        dtype = self.serving_dtype
        # Key by key, in place: the gathered fp32 copy (FSDP, rank 0's CPU) shrinks as the bf16 one grows.
        for key, value in state_dict.items():
            if value.is_floating_point():
                state_dict[key] = value.to(dtype)
        super()._save(output_dir, state_dict)
        if self.args.should_save:
            # save_pretrained writes the dtype of the live (fp32) parameters into config.json; servers load
            # a model in that dtype by default, so it must name what the weights are.
            config = copy.deepcopy(model.config)
            config.dtype = dtype
            config.save_pretrained(output_dir)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            lr_end = self.args.lr_scheduler_kwargs["lr_end"]
            self.lr_scheduler = lima_schedule(
                optimizer or self.optimizer, num_training_steps, lr_end, self.args.warmup_steps
            )
        return self.lr_scheduler


def lima_schedule(optimizer, steps: int, lr_end: float, warmup_steps: int = 0):
    """Linear decay from the optimizer's lr at step 0 to lr_end at step `steps - 1` (the last), then flat."""
    return get_polynomial_decay_schedule_with_warmup(
        optimizer, num_warmup_steps=warmup_steps, num_training_steps=max(steps - 1, 1), lr_end=lr_end, power=1.0
    )


class TokenCounter:
    """Wraps the collator to count real and padded tokens, for the real-token fraction in the log."""

    def __init__(self, collator):
        self.collator = collator
        self.real = 0
        self.total = 0

    def __call__(self, features):
        batch = self.collator(features)
        self.real += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
        self.total += batch["input_ids"].numel()
        return batch

    @property
    def fraction(self) -> float:
        return self.real / self.total if self.total else 1.0


def effective_batch(args) -> int:
    return args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size


class RecordBatch(TrainerCallback):
    """Puts the batch the trainer really runs with into log_history, so runs on different device counts can be
    compared: per-device micro-batch x gradient accumulation x processes must equal the recipe's batch."""

    def on_train_begin(self, args, state, control, **kwargs):
        state.log_history.append(
            {
                "step": state.global_step,
                "processes": args.world_size,
                "per_device_batch_size": args.per_device_train_batch_size,
                "gradient_accumulation_steps": args.gradient_accumulation_steps,
                "effective_batch": effective_batch(args),
            }
        )


class KeepEpochs(TrainerCallback):
    """At the end of each epoch in the keep window, save a servable model directory (not optimizer state).

    After the last epoch it also cancels the trainer's resume checkpoint: the run completes right after and
    removes it, and it is the largest write of a run (fp32 weights and Adam's two moments, 16 bytes a
    parameter); a run killed before completing resumes from the epoch before, as it would mid-epoch."""

    def __init__(self, save):
        self.save = save

    def on_epoch_end(self, args, state, control, **kwargs):
        self.save(round(state.epoch))
        if state.global_step >= state.max_steps:
            control.should_save = False


# ------------------------------------------------------------------------------------------- the runs


def train(
    recipe: Recipe, models: list[str], output: Path, resume: bool = False, sets: TrainingSets | None = None
) -> list[Path]:
    """Train each requested model ('zero-shot', 'dialogue') and return their run directories.

    Every process of a distributed launch runs this; each model's training arguments come first, so what
    follows knows its rank and the world size.
    """
    run_dirs = [output / recipe.name / MODEL_DIRS[which] for which in models]
    args = training_args(recipe, run_dirs[0] / "checkpoints")
    # Downloads and conversions into shared caches happen once, on each node's main process; the others
    # then read what it wrote.
    with args.main_process_first(desc="loading the data and the base model"):
        sets = sets or load_training_sets(recipe.lima, recipe.dialogues or DIALOGUES_DIR)
        base_dir = resolve_base(recipe.base)
    for which, run_dir in zip(models, run_dirs, strict=True):
        if run_dir != run_dirs[0]:
            args = training_args(recipe, run_dir / "checkpoints")
        examples = sets.zero_shot if which == "zero-shot" else sets.dialogue
        train_model(recipe, which, examples, sets, base_dir, run_dir, resume, args)
    return run_dirs


def train_model(
    recipe: Recipe,
    which: str,
    examples: list[Example],
    sets: TrainingSets,
    base_dir: Path,
    run_dir: Path,
    resume: bool,
    args: SFTConfig,
) -> None:
    data_label = (
        sets.single_turn_label if which == "zero-shot" else f"{sets.single_turn_label} + {sets.dialogues_label}"
    )
    identity = {
        "recipe": recipe.to_dict(),
        "model": which,
        "base": str(recipe.base),
        "data": {"fingerprint": fingerprint(examples), "examples": len(examples), "built_from": data_label},
    }
    if _claim_on_main(run_dir, identity, resume) == "complete":
        log.info("%s: already complete, nothing to do", run_dir)
        return
    file_log = _log_to_file(run_dir / "train.log") if args.should_save else None
    try:
        _train(recipe, which, examples, data_label, identity, base_dir, run_dir, resume, args)
    finally:
        if file_log is not None:
            logging.getLogger().removeHandler(file_log)
            file_log.close()


def training_args(recipe: Recipe, output_dir: Path, **overrides) -> SFTConfig:
    """LIMA's recipe as SFTConfig; `overrides` go to it as is (benchmarks).

    Built before the model: constructing it starts the distributed state, whose world size splits the batch
    into per-device micro-batches x gradient accumulation x processes.
    """
    on_cuda = torch.cuda.is_available()
    settings = dict(
        output_dir=str(output_dir),
        num_train_epochs=recipe.epochs,
        per_device_train_batch_size=recipe.per_device_batch_size,
        learning_rate=recipe.learning_rate,
        lr_scheduler_type="polynomial",
        lr_scheduler_kwargs={"lr_end": recipe.final_learning_rate, "power": 1.0},
        warmup_steps=recipe.warmup_steps,
        optim="adamw_torch",
        adam_beta1=recipe.adam_beta1,
        adam_beta2=recipe.adam_beta2,
        weight_decay=recipe.weight_decay,
        max_length=recipe.max_length,
        bf16=recipe.precision == "bf16" and (not on_cuda or torch.cuda.is_bf16_supported()),
        use_cpu=not on_cuda,
        activation_checkpointing=recipe.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        dataloader_pin_memory=on_cuda,
        ddp_find_unused_parameters=False,  # every weight takes part in every step; the search costs a graph walk
        train_sampling_strategy="group_by_length" if recipe.group_by_length else "random",
        save_strategy="epoch",
        save_total_limit=1,  # the last epoch's full state, for --resume (not after the last epoch: KeepEpochs)
        logging_steps=recipe.logging_steps,
        report_to="none",  # TensorBoard is added by the caller, writing beside the models
        seed=recipe.seed,
        disable_tqdm=False,
    )
    args = SFTConfig(**{**settings, **overrides})
    per_step = recipe.per_device_batch_size * args.world_size
    if recipe.batch_size % per_step:
        raise UserError(
            f"error: batch_size {recipe.batch_size} is not a multiple of per_device_batch_size x processes = "
            f"{recipe.per_device_batch_size} x {args.world_size}: change per_device_batch_size or the process count"
        )
    if "gradient_accumulation_steps" not in overrides:
        args.gradient_accumulation_steps = recipe.batch_size // per_step
    return args


def load_for_training(recipe: Recipe, base_dir: Path | str):
    """The base model and tokenizer, with EOT added and residual dropout installed. Returns (model, tokenizer, eot).

    Call it after `training_args`: from_pretrained then loads as the engine asks (under FSDP's
    cpu_ram_efficient_loading only rank 0 reads the weights; under ZeRO-3's zero3_init each rank a shard).
    """
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    # fp32 master weights always: bf16 runs as autocast (or FSDP mixed precision), because a bf16 weight cannot
    # hold an update of lr 1e-5 relative to its size, so pure-bf16 AdamW would silently skip most of them.
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    eot_id = chat_format.add_end_of_turn(model, tokenizer)
    rates = add_residual_dropout(model, recipe.residual_dropout)
    log.info("residual dropout by layer: %s", ", ".join(f"{r:.3f}" for r in rates))
    return model, tokenizer, eot_id


def build_trainer(recipe: Recipe, args: SFTConfig, model, tokenizer, eot_id: int, rows: list[dict]) -> LimaTrainer:
    """An SFTTrainer over pre-tokenized rows, with LIMA's schedule, the EOT row's rate and token counting."""
    from datasets import Dataset

    dataset = Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    on_cpu = args.device.type == "cpu"
    peft_config = _lora_config(model, recipe.lora, eot_id, on_cpu=on_cpu) if recipe.lora else None
    trainer = LimaTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config
    )
    if recipe.lora:
        trainer.eot_lr_scale = float(recipe.lora.get("eot_lr_scale", 1.0))
    trainer.data_collator = TokenCounter(trainer.data_collator)
    trainer.add_callback(RecordBatch())
    return trainer


def _train(recipe, which, examples, data_label, identity, base_dir, run_dir, resume, args) -> None:
    log.info("training %s (%s) on %d examples: %s", which, run_dir, len(examples), data_label)
    model, tokenizer, eot_id = load_for_training(recipe, base_dir)
    encoded = encode(examples, tokenizer, recipe.max_length)
    rows = choose(encoded.rows, recipe.single_turn_examples, recipe.dialogue_examples)
    if not rows:
        raise UserError(f"error: {which}: no example left to train on after truncation at {recipe.max_length} tokens")
    truncated = sum(r["length"] > len(r["input_ids"]) for r in rows)
    log.info(
        "%d examples (%d multi-turn), %d tokens; %d of them cut at %d tokens, %d dropped (no assistant token left)",
        len(rows),
        sum(r["multi_turn"] for r in rows),
        sum(len(r["input_ids"]) for r in rows),
        truncated,
        recipe.max_length,
        encoded.dropped,
    )
    log.info(
        "batch %d = %d per device x %d accumulation steps x %d processes",
        recipe.batch_size,
        args.per_device_train_batch_size,
        args.gradient_accumulation_steps,
        args.world_size,
    )
    tokenizer.chat_template = chat_format.SERVING_TEMPLATE  # what every saved model carries
    checkpoints = Path(args.output_dir)
    trainer = build_trainer(recipe, args, model, tokenizer, eot_id, rows)
    counter = trainer.data_collator
    log.info("engine: %s on %s", trainer.accelerator.distributed_type.value, _device_name(args.world_size))
    started = time.time()

    def save_epoch(epoch: int) -> None:
        if epoch not in recipe.keep_range():
            return
        figures = {
            "epoch": epoch,
            "steps": trainer.state.global_step,
            "effective_batch": effective_batch(args),
            "processes": args.world_size,
            "train_loss": _last_loss(trainer.state.log_history),
            "real_token_fraction": round(counter.fraction, 4),  # as seen by the main process
            "train_seconds": round(time.time() - started, 1),
            "examples": len(rows),
            "truncated": truncated,
            "dropped": encoded.dropped,
            "device": _device_name(args.world_size),
            "engine": trainer.accelerator.distributed_type.value,
            "peak_memory_mb": peak_memory_mb(),  # the main process's: GPU memory allocated, else CPU RSS
        }
        save_servable(trainer, tokenizer, run_dir / f"epoch-{epoch}", identity, figures)

    trainer.add_callback(KeepEpochs(save_epoch))
    if trainer.is_world_process_zero():
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        trainer.add_callback(TensorBoardCallback(SummaryWriter(log_dir=str(run_dir / "tensorboard"))))
    # A run killed while saving leaves a checkpoint without trainer_state.json (written last): skip it.
    complete = [p for p in checkpoints.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    last = max(complete, key=lambda p: int(p.name.split("-")[1]), default=None)
    if resume and last is not None:
        log.info("resuming from %s", last.name)
    trainer.train(resume_from_checkpoint=str(last) if resume and last is not None else None)
    log.info("%s: real-token fraction %.3f (real tokens / all tokens in batches)", which, counter.fraction)

    if trainer.is_world_process_zero():
        (run_dir / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1) + "\n")
        if not (run_dir / SELECTED).exists():
            (run_dir / SELECTED).write_text(f"epoch-{recipe.keep_epochs[1]}\n")
        _write_run_file(run_dir, {**identity, "status": "complete"})
        shutil.rmtree(checkpoints, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()  # nobody starts the next model while the main process still writes


def _lora_config(model, settings: dict[str, Any], eot_id: int, on_cpu: bool):
    """LoRA on every linear layer, plus a way for the new EOT token to become predictable.

    On CPUs: peft's trainable-token row on the output head only (no gradient for the other 262k rows). The head
    is untied from the input embeddings first, because a tied EOT row is pulled both ways: as the target at each
    answer's end and as an input after every utterance, which in dialogues won (measured: EOT ranked last of
    the vocabulary at held-out answer ends). TRL's fused GPU head reads lm_head.weight directly and would miss
    that row, so on GPUs the whole head trains instead.
    """
    from peft import LoraConfig
    from torch import nn

    if on_cpu and model.get_output_embeddings().weight is model.get_input_embeddings().weight:
        model.get_output_embeddings().weight = nn.Parameter(model.get_input_embeddings().weight.detach().clone())
        model.config.get_text_config().tie_word_embeddings = False
        model.config.tie_word_embeddings = False
    return LoraConfig(
        r=int(settings.get("r", 16)),
        lora_alpha=int(settings.get("alpha", 32)),
        lora_dropout=float(settings.get("dropout", 0.0)),
        target_modules="all-linear",
        trainable_token_indices={"lm_head": [eot_id]} if on_cpu else None,
        modules_to_save=None if on_cpu else ["lm_head"],
        task_type="CAUSAL_LM",
    )


def save_servable(trainer, tokenizer, path: Path, identity: dict, figures: dict) -> None:
    """Write a model directory that AutoModelForCausalLM, TGI and vLLM load as is, with its model card.

    Every process calls this (gathering sharded weights is a collective); the main process alone writes.
    """
    dtype = torch.bfloat16 if identity["recipe"]["precision"] == "bf16" else torch.float32
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(unwrapped, "merge_and_unload"):  # LoRA: serve merged weights, keep training the adapter
        if trainer.is_world_process_zero():
            merged = copy.deepcopy(unwrapped).merge_and_unload()
            if merged.get_output_embeddings().weight is not merged.get_input_embeddings().weight:
                # A head trained on its own (modules_to_save): saved as tied, it would be replaced on load.
                merged.config.get_text_config().tie_word_embeddings = False
                merged.config.tie_word_embeddings = False
            merged.to(dtype).save_pretrained(path)
    else:
        # The trainer's own save path gathers what FSDP or ZeRO-3 sharded; resume checkpoints stay sharded
        # (SHARDED_STATE_DICT in fsdp.yaml), and only this servable copy is gathered whole, on rank 0.
        plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
        previous = plugin.state_dict_type if plugin is not None else None
        trainer.serving_dtype = dtype
        try:
            if plugin is not None:
                plugin.set_state_dict_type("FULL_STATE_DICT")
            trainer.save_model(str(path))
        finally:
            trainer.serving_dtype = None
            if plugin is not None:
                plugin.set_state_dict_type(previous)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(path, save_jinja_files=False)  # the template inside tokenizer_config.json (TGI)
        (path / "chat_template.jinja").unlink(missing_ok=True)
        (path / "training_args.bin").unlink(missing_ok=True)
        (path / "README.md").write_text(model_card(identity, figures), encoding="utf-8")
        problems = check_files(path)  # what TGI, vLLM and transformers serve will read, before anyone serves it
        if problems:
            raise UserError(f"error: {path}: not servable: {problems[0]}")
        log.info("saved %s (checked: the template renders the same in TGI's engine)", path)
    trainer.accelerator.wait_for_everyone()


def model_card(identity: dict, figures: dict) -> str:
    recipe = identity["recipe"]
    sample_note = (
        "\n> **Offline sample.** This model was trained on the project's authored sample, which stands in for "
        "LIMA's 1,000 examples. It demonstrates the pipeline; it is not a reproduction of the paper's data.\n"
        if "OFFLINE SAMPLE" in identity["data"]["built_from"]
        else ""
    )
    return "\n".join(
        [
            "---",
            yaml.safe_dump(
                {"base_model": identity["base"], "library_name": "transformers", "tags": ["lima", "sft"]},
                sort_keys=False,
            ).strip(),
            "---",
            f"# {MODEL_DIRS[identity['model']]} ({identity['model']}), epoch {figures['epoch']}",
            "",
            "Fine-tuned with the LIMA multi-turn arena (LIMA: Less Is More for Alignment, arXiv 2305.11206).",
            sample_note,
            f"- Base model: `{identity['base']}`",
            f"- Data: {identity['data']['examples']} examples, {identity['data']['built_from']} "
            f"(fingerprint `{identity['data']['fingerprint']}`)",
            f"- Recipe: `{recipe['name']}`; AdamW ({recipe['adam_beta1']}, {recipe['adam_beta2']}), weight decay "
            f"{recipe['weight_decay']}, lr {recipe['learning_rate']} linear to {recipe['final_learning_rate']}, "
            f"batch {recipe['batch_size']}, {recipe['epochs']} epochs, max length {recipe['max_length']}, "
            f"residual dropout 0.0 to {recipe['residual_dropout']}"
            + (f", LoRA {recipe['lora']}" if recipe["lora"] else ""),
            f"- Conversation format: every utterance ends with `{chat_format.EOT}`, which stops generation "
            "(chat template in tokenizer_config.json).",
            "",
            "## Training figures",
            "",
            *(f"- {key}: {value}" for key, value in figures.items()),
            "",
            "## Full recipe",
            "",
            "```yaml",
            yaml.safe_dump(recipe, sort_keys=False).strip(),
            "```",
            "",
        ]
    )


# ------------------------------------------------------------------------------------------- helpers


def _claim_on_main(run_dir: Path, identity: dict, resume: bool) -> str:
    """The main process claims the run directory; the others wait for its answer and share its outcome,
    a refusal included, so no process reads a run.yaml another has just written, and none hangs."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState()
    outcome: list[Any] = [None]
    if state.is_main_process:
        try:
            outcome[0] = ("ok", _claim_run_dir(run_dir, identity, resume))
        except UserError as exc:
            outcome[0] = ("refused", exc.lines)
    if state.num_processes > 1:
        broadcast_object_list(outcome, from_process=0)
    kind, value = outcome[0]
    if kind == "refused":
        raise UserError(*value)
    return value


def _claim_run_dir(run_dir: Path, identity: dict, resume: bool) -> str:
    """Refuse to mix runs in one directory; returns 'new', 'resume' or 'complete'."""
    run_file = run_dir / RUN_FILE
    if not run_file.exists():
        if run_dir.exists() and any(run_dir.iterdir()):
            raise UserError(
                f"error: {run_dir}: holds files that are not a run of ours: choose another --output or empty it"
            )
        _write_run_file(run_dir, {**identity, "status": "running"})
        return "new"
    previous = yaml.safe_load(run_file.read_text(encoding="utf-8")) or {}
    status = previous.pop("status", "running")
    if previous != json.loads(json.dumps(identity)):
        changed = sorted(
            key
            for key in set(previous.get("recipe", {})) | set(identity["recipe"])
            if previous.get("recipe", {}).get(key) != identity["recipe"].get(key)
        )
        what = f"recipe keys {', '.join(changed)}" if changed else "its base model or data"
        raise UserError(
            f"error: {run_dir}: holds a different run (differs in {what}): choose another --output or remove it"
        )
    if not resume:
        raise UserError(
            f"error: {run_dir}: already holds this run ({status}): pass --resume to continue it, or remove it "
            "to start over"
        )
    return "complete" if status == "complete" else "resume"


def _write_run_file(run_dir: Path, content: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_FILE).write_text(yaml.safe_dump(json.loads(json.dumps(content)), sort_keys=False))


def _log_to_file(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def _last_loss(history: list[dict]) -> float | None:
    losses = [entry["loss"] for entry in history if "loss" in entry]
    return round(losses[-1], 4) if losses else None


def peak_memory_mb() -> int:
    """This process's peak: GPU memory allocated on CUDA, else the CPU's resident set."""
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _device_name(processes: int) -> str:
    if torch.cuda.is_available():
        return f"{processes} x {torch.cuda.get_device_name(0)}"
    threads = f"{torch.get_num_threads()} threads"
    return f"CPU ({platform.machine()}, " + (f"{processes} processes x {threads})" if processes > 1 else f"{threads})")
