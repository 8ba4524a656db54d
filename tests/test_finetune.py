"""Training: label mask, schedule, residual dropout, the checkpoint window, servable output, bad input.

Everything runs on real transformers models: the tiny random Llama of the `test` recipe (seconds on a CPU).
"""

from __future__ import annotations

import itertools
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, run_cli
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from common.cli import UserError
from finetune import chat_format
from finetune.base_models import tiny_model_dir
from finetune.data import Example
from finetune.recipe import load_recipe
from finetune.residual_dropout import add_residual_dropout, installed_rates, residual_branches
from finetune.servable import check_files, check_servable
from finetune.train import encode, lima_schedule
from serving.folder import select
from serving.precision import native_bf16

TRAIN_TEST = ("-m", "finetune", "train", "--recipe", "test")  # the test recipe's training, as a user types it
DIALOGUE = [
    {"role": "user", "content": "Name a prime."},
    {"role": "assistant", "content": "Seven is prime."},
    {"role": "user", "content": "And an even one?"},
    {"role": "assistant", "content": "Two, the only even prime."},
]


@pytest.fixture(scope="module")
def tiny() -> tuple:
    base = tiny_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    eot = chat_format.add_end_of_turn(model, tokenizer)
    return model, tokenizer, eot


# ------------------------------------------------------------------------------------------ the format


def test_eot_is_new_mean_initialised_and_stops_generation(tiny):
    model, tokenizer, eot = tiny
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir())
    assert eot == base.config.vocab_size  # a new row, not the base's EOS
    assert eot != tokenizer.eos_token_id
    old = base.get_input_embeddings().weight
    assert torch.allclose(model.get_input_embeddings().weight[eot], old.mean(dim=0), atol=1e-6)
    assert torch.allclose(model.get_output_embeddings().weight[eot], base.get_output_embeddings().weight.mean(0))
    assert model.generation_config.eos_token_id[0] == eot


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_eot_on_a_padded_vocabulary_is_mean_initialised_from_the_trained_rows(tied):
    # Qwen-style: the embedding matrix is rounded up past the tokenizer, and EOT lands on a padding row.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir())
    known = len(tokenizer)
    padded = (known // 64 + 2) * 64
    shape = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=2)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=padded, num_hidden_layers=1, tie_word_embeddings=tied, **shape))
    with torch.no_grad():  # padding rows the base never trained: far from every real row
        model.get_input_embeddings().weight[known:] = 50.0
        model.get_output_embeddings().weight[known:] = 50.0
    inputs = model.get_input_embeddings().weight.detach().clone()
    outputs = model.get_output_embeddings().weight.detach().clone()

    eot = chat_format.add_end_of_turn(model, tokenizer)
    assert eot == known < padded == model.get_input_embeddings().weight.shape[0]  # no resize: a padding row
    now_in, now_out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert torch.allclose(now_in[eot], inputs[:known].mean(0), atol=1e-6)
    assert torch.allclose(now_out[eot], outputs[:known].mean(0), atol=1e-6)
    assert torch.equal(now_in[eot + 1 :], inputs[eot + 1 :])  # the other padding rows are left alone

    # a base that already has EOT (one of our models, trained again) keeps its trained row
    trained_row = now_in[eot].detach().clone() + 1.0
    with torch.no_grad():
        now_in[eot] = trained_row
    assert chat_format.add_end_of_turn(model, tokenizer) == eot
    assert torch.equal(model.get_input_embeddings().weight[eot], trained_row)


def test_label_mask_covers_exactly_assistant_turns_and_eot(tiny):
    _, tokenizer, eot = tiny
    encoded = encode([Example(DIALOGUE, "test")], tokenizer, max_length=2048)
    (row,) = encoded.rows
    kept = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
    expected = tokenizer("Seven is prime.", add_special_tokens=False)["input_ids"] + [eot]
    expected += tokenizer("Two, the only even prime.", add_special_tokens=False)["input_ids"] + [eot]
    assert kept == expected
    assert row["labels"].count(-100) == len(row["input_ids"]) - len(expected)
    # every user turn, header and EOT after a user turn stays out of the loss
    masked_text = tokenizer.decode(
        [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label == -100]
    )
    assert "Name a prime." in masked_text and "And an even one?" in masked_text


def test_truncation_cuts_and_drops_examples_without_assistant_tokens(tiny):
    _, tokenizer, _ = tiny
    long_prompt = [{"role": "user", "content": "word " * 400}, {"role": "assistant", "content": "ok"}]
    long_answer = [{"role": "user", "content": "Talk."}, {"role": "assistant", "content": "word " * 400}]
    examples = [Example(DIALOGUE, "t"), Example(long_prompt, "t"), Example(long_answer, "t")]
    encoded = encode(examples, tokenizer, max_length=64)
    assert encoded.dropped == 1  # the long prompt: nothing of its answer survives the cut
    short, cut = encoded.rows
    assert len(short["input_ids"]) == short["length"] < 64
    assert len(cut["input_ids"]) == len(cut["labels"]) == 64 < cut["length"]
    assert any(label != -100 for label in cut["labels"])


def test_training_and_serving_templates_render_the_same(tiny):
    _, tokenizer, _ = tiny
    for prompt in (False, True):
        train = tokenizer.apply_chat_template(
            DIALOGUE, chat_template=chat_format.CHAT_TEMPLATE, tokenize=False, add_generation_prompt=prompt
        )
        serve = tokenizer.apply_chat_template(
            DIALOGUE, chat_template=chat_format.SERVING_TEMPLATE, tokenize=False, add_generation_prompt=prompt
        )
        assert train == serve
    assert "{%- generation" not in chat_format.SERVING_TEMPLATE and "endgeneration" not in chat_format.SERVING_TEMPLATE


# ------------------------------------------------------------------------------------------ the schedule


def test_lr_is_1e5_at_first_step_1e6_at_last_linear_between():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1e-5)
    steps = 11
    schedule = lima_schedule(optimizer, steps, lr_end=1e-6)
    used = []
    for _ in range(steps):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert used[0] == pytest.approx(1e-5)
    assert used[-1] == pytest.approx(1e-6)
    assert used == pytest.approx([1e-5 - i * 0.9e-6 for i in range(steps)])


def test_trainer_uses_the_recipes_optimiser_and_schedule(trained):
    history = json.loads((trained / "lima-1000" / "log_history.json").read_text())
    logged = [entry["learning_rate"] for entry in history if "learning_rate" in entry]
    # the Trainer logs the rate of the next step; the last is the final rate (after the last step, flat)
    assert logged[-1] == pytest.approx(1e-6)
    assert all(a > b for a, b in itertools.pairwise(logged))
    recipe = yaml.safe_load((trained / "lima-1000" / "run.yaml").read_text())["recipe"]
    assert (recipe["adam_beta1"], recipe["adam_beta2"], recipe["weight_decay"]) == (0.9, 0.95, 0.1)


# ---------------------------------------------------------------------------------------- residual dropout


def small_llama(layers: int) -> LlamaForCausalLM:
    shape = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=2)
    return LlamaForCausalLM(LlamaConfig(num_hidden_layers=layers, **shape))


def test_residual_dropout_rates_rise_linearly_by_layer():
    model = small_llama(4)
    rates = add_residual_dropout(model, 0.3)
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert installed_rates(model) == [(r, r) for r in rates]
    layer = model.model.layers[0]
    assert residual_branches(layer) == (layer.self_attn, layer.mlp)


def test_gemma_style_layers_drop_after_their_post_norms():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
    )
    layer = Gemma3ForCausalLM(config).model.layers[0]
    assert residual_branches(layer) == (layer.post_attention_layernorm, layer.post_feedforward_layernorm)


def test_dropout_acts_in_training_only_and_survives_gradient_checkpointing():
    torch.manual_seed(0)
    model = small_llama(3)
    add_residual_dropout(model, 0.3)
    ids = torch.randint(0, 64, (2, 16))

    model.eval()
    assert torch.equal(model(ids).logits, model(ids).logits)  # no dropout in eval
    model.train()
    assert not torch.equal(model(ids).logits, model(ids).logits)  # dropout in training

    top = residual_branches(model.model.layers[-1])[1]
    seen = []
    top.register_forward_hook(lambda module, args, out: seen.append(out))
    model(ids)
    zero_fraction = (seen[-1] == 0).float().mean().item()
    assert 0.2 < zero_fraction < 0.4  # the top layer drops about 30%

    # Same seed, with and without checkpointing: the recomputation replays the same masks, so same gradients.
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        torch.manual_seed(1)
        model(ids, labels=ids).loss.backward()
        grads.append(model.model.layers[0].mlp.down_proj.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


# -------------------------------------------------------------------------------------- the saved runs


def test_both_models_keep_only_the_window_of_epochs(trained):
    for name in ("lima-1000", "lima-1030"):
        run = trained / name
        assert sorted(p.name for p in run.glob("epoch-*")) == ["epoch-2", "epoch-3"]  # test window: 2..3 of 3
        assert (run / "selected").read_text().strip() == "epoch-3"
        assert not (run / "checkpoints").exists()  # no optimizer state left once complete
        assert (run / "train.log").is_file() and any((run / "tensorboard").iterdir())
        assert yaml.safe_load((run / "run.yaml").read_text())["status"] == "complete"
        for epoch in run.glob("epoch-*"):
            assert not list(epoch.glob("optimizer*"))
            card = (epoch / "README.md").read_text()
            assert "OFFLINE SAMPLE" not in card or "Offline sample" in card
            assert f"epoch {epoch.name.split('-')[1]}" in card
    log = (trained / "lima-1030" / "train.log").read_text()
    assert "real-token fraction" in log and "multi-turn" in log


def test_saved_dir_reloads_renders_generates_and_stops_at_eot(trained):
    assert check_servable(trained / "lima-1030" / "epoch-3") == []


def test_a_saved_epoch_whose_weight_names_do_not_match_is_not_servable(trained, tmp_path):
    from safetensors.torch import load_file, save_file

    epoch = tmp_path / "epoch-3"
    shutil.copytree(trained / "lima-1030" / "epoch-3", epoch)
    weights = load_file(epoch / "model.safetensors")
    weights["model.layers.0.mlp.gate.weight"] = weights.pop("model.layers.0.mlp.gate_proj.weight")
    save_file(weights, epoch / "model.safetensors", metadata={"format": "pt"})
    assert check_files(epoch) == []  # the files alone look right
    assert check_servable(epoch) == [
        "the saved weights do not match the model's: missing model.layers.0.mlp.gate_proj.weight; "
        "unexpected model.layers.0.mlp.gate.weight"
    ]


def test_no_resume_checkpoint_is_written_after_the_last_epoch(tmp_path):
    """The run removes its resume state as it completes: writing it after the last epoch (16 bytes a
    parameter) would be the largest write of a run, for nothing."""
    from finetune.train import KeepEpochs, build_trainer, training_args

    recipe = load_recipe("test", ["epochs=2", "keep_epochs=[1,2]", "batch_size=1", "per_device_batch_size=1"])
    args = training_args(recipe, tmp_path / "checkpoints", disable_tqdm=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir())
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir())
    eot = chat_format.add_end_of_turn(model, tokenizer)
    trainer = build_trainer(
        recipe, args, model, tokenizer, eot, encode([Example(DIALOGUE, "test")], tokenizer, 2048).rows
    )
    kept = []
    trainer.add_callback(KeepEpochs(kept.append))
    trainer.train()
    assert kept == [1, 2]  # both epochs' servable saves happen
    assert [p.name for p in (tmp_path / "checkpoints").glob("checkpoint-*")] == ["checkpoint-1"]  # epoch 1's only


def test_a_servable_save_goes_through_the_trainers_save_path_in_the_runs_precision(tiny, tmp_path):
    """FSDP and ZeRO-3 gather sharded weights only inside Trainer.save_model (ZeRO-3 through the engine, which
    trainer.model is not): a servable save must go through it, and write bf16 while training stays fp32."""
    from safetensors import safe_open

    from finetune.train import build_trainer, save_servable, training_args

    recipe = load_recipe("test", ["precision=bf16"])
    base = tiny_model_dir()
    args = training_args(recipe, tmp_path / "checkpoints", max_steps=1, save_strategy="no", disable_tqdm=True)
    model = AutoModelForCausalLM.from_pretrained(base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    eot = chat_format.add_end_of_turn(model, tokenizer)
    rows = encode([Example(DIALOGUE, "test")], tokenizer, 2048).rows
    tokenizer.chat_template = chat_format.SERVING_TEMPLATE  # as train.py sets it before training
    trainer = build_trainer(recipe, args, model, tokenizer, eot, rows)
    calls = []
    original = trainer.save_model
    trainer.save_model = lambda output_dir=None, **kw: calls.append(output_dir) or original(output_dir, **kw)

    identity = {"recipe": recipe.to_dict(), "model": "dialogue", "base": "tiny:llama"}
    identity["data"] = {"fingerprint": "x", "examples": 1, "built_from": "test"}
    save_servable(trainer, tokenizer, tmp_path / "epoch-1", identity, {"epoch": 1})
    assert calls == [str(tmp_path / "epoch-1")]
    with safe_open(tmp_path / "epoch-1" / "model.safetensors", "pt") as saved:
        assert {saved.get_tensor(key).dtype for key in saved.keys()} == {torch.bfloat16}  # noqa: SIM118 (not a dict)
    assert json.loads((tmp_path / "epoch-1" / "config.json").read_text())["dtype"] == "bfloat16"
    assert next(trainer.model.parameters()).dtype == torch.float32  # the master weights are untouched
    assert str(trainer.model.config.dtype).removeprefix("torch.") == "float32"
    assert not (tmp_path / "epoch-1" / "training_args.bin").exists()
    assert (tmp_path / "epoch-1" / "README.md").is_file()
    assert check_servable(tmp_path / "epoch-1") == []

    # what save_pretrained alone wrote before: bf16 weights under a config that says float32
    config_path = tmp_path / "epoch-1" / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "dtype": "float32"}))
    assert check_servable(tmp_path / "epoch-1") == ["model.safetensors stores ['BF16'], config.json says float32"]

    # A template TGI's engine cannot render fails the save, in one line: the training template's
    # `{%- generation -%}` markers (TGI deletes only the exact `{% generation %}` spelling).
    tokenizer.chat_template = chat_format.CHAT_TEMPLATE
    with pytest.raises(UserError) as refused:
        save_servable(trainer, tokenizer, tmp_path / "epoch-2", identity, {"epoch": 2})
    assert len(refused.value.lines) == 1
    assert refused.value.lines[0].startswith(f"error: {tmp_path / 'epoch-2'}: not servable: TGI's template engine")


def test_check_served_passes_a_kept_epoch_and_names_what_would_differ_on_tgi(trained, tmp_path):
    good = trained / "lima-1030" / "epoch-3"
    result = run_cli("-m", "finetune", "check-served", str(good), "--generate")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{good}: servable (template identical in TGI's minijinja and Jinja2, stops at EOT)"

    def with_template(template: str | None) -> Path:
        folder = tmp_path / "model"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(good, folder)
        config = json.loads((folder / "tokenizer_config.json").read_text())
        config["chat_template"] = template
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
        return folder

    # renders in both engines, but not the same bytes: minijinja prints a mapping as JSON, Jinja2 as Python
    differs = with_template("{{ {'turns': messages|length} }}" + chat_format.SERVING_TEMPLATE)
    problems = check_files(differs)
    assert problems[0].startswith(
        "the chat template renders differently on TGI (minijinja) from transformers (Jinja2) at character 1: "
    )
    for template, expected in [
        (chat_format.SERVING_TEMPLATE.replace("'User:", "'User:' ~ raise_exception('no users') ~ '"), "cannot render"),
        (None, "has no chat_template"),
    ]:
        result = run_cli("-m", "finetune", "check-served", str(with_template(template)))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr
        assert lines[0].startswith(f"error: {tmp_path / 'model'}: ") and expected in lines[0], lines
    result = run_cli("-m", "finetune", "check-served", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"error: {tmp_path / 'nowhere'}: not a saved model folder: no config.json or tokenizer_config.json"
    )


def test_select_names_a_kept_epoch(trained, tmp_path):
    run = trained / "lima-1000"
    assert select(run, 2).name == "epoch-2"
    assert (run / "selected").read_text().strip() == "epoch-2"
    result = run_cli("-m", "finetune", "select", str(run), "--epoch", "7")
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {run}: has no epoch-7 model: kept epochs are epoch-2, epoch-3"
    assert (run / "selected").read_text().strip() == "epoch-2"
    result = run_cli("-m", "finetune", "select", str(run), "--epoch", "3")
    assert result.returncode == 0 and (run / "selected").read_text().strip() == "epoch-3"


# ------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--recipe", "nope"],
            "error: --recipe nope: no such recipe: use one of lima-65b, lima-7b, quick-cpu, "
            "single-gpu, test or a path to a YAML file",
        ),
        (["--recipe", "test", "--set", "epoch=3"], "error: --set epoch: unknown recipe key 'epoch': known keys are"),
        (["--recipe", "test", "--set", "learning_rate=fast"], "error: "),
        (
            ["--recipe", "test", "--base", "./no/such/model"],
            "error: base ./no/such/model: not found: pass bundled:gemma-3-270m, a local model folder",
        ),
    ],
    ids=["unknown recipe", "unknown key", "not a number", "missing base"],
)
def test_bad_input_is_one_line_exit_2(tmp_path, args, expected):
    result = run_cli("-m", "finetune", "train", *args, "--output", str(tmp_path))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.strip().splitlines() if not line.startswith("INFO ")]
    assert len(errors) == 1 and errors[0].startswith(expected)
    assert not any(tmp_path.iterdir())  # nothing written


def test_hub_base_offline_is_one_line(tmp_path):
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = run_cli(*TRAIN_TEST, "--base", "someorg/some-model", "--output", str(tmp_path), env=offline)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip().splitlines()[-1].startswith("error: base someorg/some-model (Hub): cannot reach the Hub")
    )


def test_output_holding_another_run_is_refused_and_untouched(trained, tmp_path):
    output = trained.parent
    before = {p: p.stat().st_mtime_ns for p in trained.rglob("*") if p.is_file()}
    result = run_cli(*TRAIN_TEST, "--set", "epochs=4", "--set", "keep_epochs=[3,4]", "--output", str(output))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {trained / 'lima-1000'}: holds a different run (differs in recipe keys epochs, keep_epochs): "
        "choose another --output or remove it"
    )
    same = run_cli(*TRAIN_TEST, "--output", str(output))
    assert same.returncode == 2 and "already holds this run (complete): pass --resume" in same.stderr
    assert before == {p: p.stat().st_mtime_ns for p in trained.rglob("*") if p.is_file()}


def test_a_killed_run_resumes_from_its_last_epoch(tmp_path):
    args = [*TRAIN_TEST, "--model", "dialogue", "--set", "epochs=6", "--set", "keep_epochs=[5,6]", "--output"]
    cmd = [sys.executable, *args, str(tmp_path)]
    run = tmp_path / "test" / "lima-1030"
    process = subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
    )
    deadline = time.time() + 300
    while not list((run / "checkpoints").glob("checkpoint-*/trainer_state.json")) and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert list((run / "checkpoints").glob("checkpoint-*")), "the run never reached its first checkpoint"
    assert yaml.safe_load((run / "run.yaml").read_text())["status"] == "running"

    refused = run_cli(*cmd[1:])
    assert refused.returncode == 2 and "already holds this run (running): pass --resume" in refused.stderr
    resumed = run_cli(*cmd[1:], "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from checkpoint-" in resumed.stderr
    assert sorted(p.name for p in run.glob("epoch-*")) == ["epoch-5", "epoch-6"]
    assert yaml.safe_load((run / "run.yaml").read_text())["status"] == "complete"


# ------------------------------------------------------------------------------------------- recipes


def test_every_recipe_states_the_papers_recipe():
    for name in ("lima-65b", "lima-7b", "single-gpu", "quick-cpu", "test"):
        text = (REPO / "finetune" / "recipes" / f"{name}.yaml").read_text()
        recipe = load_recipe(name)
        for key in (
            "adam_beta1",
            "adam_beta2",
            "weight_decay",
            "learning_rate",
            "final_learning_rate",
            "batch_size",
            "epochs",
            "max_length",
            "residual_dropout",
            "keep_epochs",
        ):
            assert f"\n{key}:" in text, f"{name}.yaml does not state {key}"
        assert (recipe.adam_beta1, recipe.adam_beta2, recipe.weight_decay, recipe.warmup_steps) == (0.9, 0.95, 0.1, 0)
        assert recipe.final_learning_rate == pytest.approx(recipe.learning_rate / 10)
    for name in ("lima-65b", "lima-7b", "single-gpu"):
        recipe = load_recipe(name)
        assert (recipe.learning_rate, recipe.epochs, recipe.max_length, recipe.keep_epochs) == (1e-5, 15, 2048, [5, 10])
        assert recipe.lora is None and recipe.single_turn_examples is None
    assert (load_recipe("lima-65b").batch_size, load_recipe("lima-65b").residual_dropout) == (32, 0.3)
    assert (load_recipe("lima-7b").batch_size, load_recipe("lima-7b").residual_dropout) == (64, 0.2)
    assert load_recipe("quick-cpu").base == "bundled:gemma-3-270m"


def test_auto_precision_becomes_what_the_machine_computes_natively(monkeypatch):
    """quick-cpu says auto: bf16 where the CPU (or GPU) has it natively, else fp32; the recipe, and so run.yaml,
    holds the one it resolved to."""
    from finetune import recipe as recipes

    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").is_file() else None
    if flags is not None and not torch.cuda.is_available():  # torch's own probe agrees with the kernel's flags
        assert recipes.native_bf16() == bool(flags & {"avx512_bf16", "amx_tile"})
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(recipes, "native_bf16", lambda native=native: native)
        assert load_recipe("quick-cpu").precision == expected
        assert load_recipe("test", ["precision=auto"]).precision == expected
    with pytest.raises(UserError, match="precision must be bf16, fp32 or auto, got 'fp16'"):
        load_recipe("test", ["precision=fp16"])


@pytest.mark.parametrize("name", ["fsdp", "zero3", "multi-node"])
def test_accelerate_configs_parse(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(REPO / "finetune" / "accelerate" / f"{name}.yaml"))
    assert config.mixed_precision == "bf16"
    assert config.num_processes == (32 if name == "multi-node" else 8)
    if name != "zero3":
        assert config.fsdp_config["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"  # resume state stays sharded
        assert config.fsdp_config["fsdp_cpu_ram_efficient_loading"] is True
    else:
        assert config.deepspeed_config["zero_stage"] == 3


def test_throughput_benchmark_prints_its_json_line():
    result = run_cli("bench/train_throughput.py", "--base", "tiny:llama", "--batch", "4", "--steps", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    line = json.loads(result.stdout.strip().splitlines()[-1])
    keys = {
        "ours_tok_s",
        "trl_default_tok_s",
        "naive_tok_s",
        "ours_real_token_fraction",
        "trl_default_real_token_fraction",
        "peak_rss_mb",
    }
    assert keys <= set(line)
    assert all(line[key] > 0 for key in keys)
    assert line["ours_real_token_fraction"] == 1.0  # micro-batches of one on a CPU: no padding at all
    # measured as training's precision: auto would train here (emulated bf16 would measure the emulation)
    assert line["precision"] == ("bf16" if native_bf16() else "fp32")
    assert 0 < line["trl_default_real_token_fraction"] < 1.0


def test_gpu_check_smoke_run_rehearses_every_leg_at_the_real_vocabulary_and_brings_back_one_folder(tmp_path):
    # The check itself needs a GPU (bench/gpu_check.py); --smoke rehearses it on CPU with what makes the real
    # run differ from a tiny model: Llama 3.2's 128,256 embedding rows over a 1,024-token tokenizer.
    out = tmp_path / "out"
    result = run_cli("bench/gpu_check.py", "--smoke", "--out", str(out), "--throughput-steps", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert json.loads((out / "gpu_check.json").read_text()) == line  # what a borrowed machine brings back
    # everything that explains the run, nothing else (no models: the scratch folder is gone)
    logs = {"gpu_check.log", "base.log", "plain.log", "fsdp.log", "serve.log", "throughput.log"}
    assert {p.name for p in out.iterdir()} == {"gpu_check.json", *logs}
    assert all((out / name).stat().st_size > 0 for name in logs)
    assert "finetune.train: saved" in (out / "plain.log").read_text()
    assert line["base_vocab_rows"] == 128256 and line["base_tokenizer_tokens"] == 1024
    assert line["base_known_mass"] > 0.999  # the random base samples ids its tokenizer has
    assert line["plain"]["ok"] is True and line["plain"]["problems"] == []
    assert (line["plain"]["steps"], line["plain"]["effective_batch"], line["plain"]["multi_turn_examples"]) == (2, 4, 4)
    assert line["plain"]["residual_dropout_logged"] and line["plain"]["peak_memory_mb"] > 0
    # the shipped FSDP launch command runs end to end; on CPU accelerate trains it without FSDP, and says so
    assert line["fsdp"]["ok"] is True and line["fsdp"]["engine"] in ("NO", "MULTI_CPU")
    assert "accelerate applies FSDP on accelerators only" in line["fsdp"]["note"]
    assert line["fsdp"]["steps"] == line["plain"]["steps"]
    # the saved epoch served in-process: one answer, then eight in one batch, at the paper's decoding, and
    # every answer says something
    serve = line["serve"]
    assert serve["ok"] is True and 8 in serve["batch_sizes"] and serve["empty_answers"] == 0, serve
    assert serve["tok_s_8"] > 0 and serve["sample"].strip()
    # served as serving chose for this machine (bf16 where native and faster, as on this CPU's probe), and so loaded
    assert serve["dtype"] == {"fp32": "torch.float32", "bf16": "torch.bfloat16"}[serve["precision"]]
    assert line["throughput_ok"] and line["ours_tok_s"] > 0 and line["trl_default_tok_s"] > 0
    assert line["max_length"] == 128  # TRL's side trains the same max_length as ours


def test_gpu_check_legs_report_their_failures_with_the_end_of_their_logs(tmp_path):
    import bench.gpu_check as check

    fails = [sys.executable, "-c", "import sys; print('step 1'); sys.exit('error: out of memory')"]
    failed = check.finish_leg("plain", check.start_leg("plain", fails, tmp_path), tmp_path, tmp_path, time.time() + 60)
    assert (failed["ok"], failed["exit"], failed["log_tail"]) == (False, 1, ["step 1", "error: out of memory"])
    assert (tmp_path / "plain.log").read_text() == "step 1\nerror: out of memory\n"

    hangs = [sys.executable, "-c", "import time; print('loading', flush=True); time.sleep(60)"]
    began = time.time()
    stopped = check.finish_leg("fsdp", check.start_leg("fsdp", hangs, tmp_path), tmp_path, tmp_path, time.time() + 3)
    assert time.time() - began < 30 and stopped["exit"] == -signal.SIGKILL and stopped["log_tail"] == ["loading"]

    result: dict = {"ok": True}
    with check.leg_log("serve", tmp_path, result):
        print("loaded")
        raise RuntimeError("CUDA error: an illegal memory access\nmore")
    assert (result["ok"], result["error"]) == (False, "RuntimeError: CUDA error: an illegal memory access")
    assert result["log_tail"][0] == "loaded" and "Traceback (most recent call last):" in result["log_tail"]
