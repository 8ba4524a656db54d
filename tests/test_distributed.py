"""Training in several processes, for real: `torchrun --nproc_per_node 2 -m finetune train --recipe test`.

On CPUs torchrun + transformers + accelerate run this as data parallel over gloo (DDP), the same code path a
multi-GPU run takes through its launcher: the distributed state starts with the training arguments, the batch
is split over the processes, the main process claims the run directory and alone writes files, and every
process takes part in each save. (accelerate applies FSDP and DeepSpeed only on accelerators:
bench/gpu_check.py runs FSDP on a GPU.)

Who wrote what is observed, not assumed: tests/fixtures/audit/sitecustomize.py is loaded into every process
and logs each write under the output folder by rank.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import FIXTURES, REPO

from finetune.servable import check_servable

AUDIT = FIXTURES / "audit"
PROCESSES = 2


def torchrun(output: Path, audit_log: Path, *args: str) -> list[str]:
    audit_log.mkdir(parents=True, exist_ok=True)
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",  # `torchrun`, from this interpreter whatever PATH holds
        "--standalone",
        "--nproc_per_node",
        str(PROCESSES),
        "-m",
        "finetune",
        "train",
        "--recipe",
        "test",
        "--output",
        str(output),
        *args,
    ]


def env_for(output: Path, audit_log: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(AUDIT), str(REPO)]),
        "LIMA_AUDIT_ROOT": str(output),
        "LIMA_AUDIT_LOG": str(audit_log),
        "OMP_NUM_THREADS": "1",  # two processes on a small machine: one thread each
    }


def run(output: Path, audit_log: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        torchrun(output, audit_log, *args),
        cwd=REPO,
        env=env_for(output, audit_log),
        capture_output=True,
        text=True,
        timeout=600,
    )


def writes(audit_log: Path) -> dict[str, list[dict]]:
    """Each rank's writes under the output folder, as the audit hook saw them."""
    return {
        path.stem: [json.loads(line) for line in path.read_text().splitlines()]
        for path in sorted(audit_log.glob("rank-*.jsonl"))
    }


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("ddp")
    output, audit_log = root / "runs", root / "audit"
    result = run(output, audit_log)
    assert result.returncode == 0, result.stderr[-4000:]
    return output / "test", audit_log, result


def batch_record(run_dir: Path) -> tuple[int, list[dict]]:
    history = json.loads((run_dir / "log_history.json").read_text())
    return max(entry["step"] for entry in history), [entry for entry in history if "effective_batch" in entry]


def test_both_models_complete_in_two_processes_with_the_same_batch_and_steps(two_process_run, trained):
    runs, _, result = two_process_run
    for name in ("lima-1000", "lima-1030"):
        run_dir = runs / name
        assert yaml.safe_load((run_dir / "run.yaml").read_text())["status"] == "complete"
        assert sorted(p.name for p in run_dir.glob("epoch-*")) == ["epoch-2", "epoch-3"]
        assert not (run_dir / "checkpoints").exists()
        steps, (record,) = batch_record(run_dir)
        one_steps, (one_record,) = batch_record(trained / name)
        # The recipe's batch of 4: 2 per device x 2 accumulation steps in one process, x 1 in two.
        assert (record["processes"], record["gradient_accumulation_steps"]) == (PROCESSES, 1)
        assert (one_record["processes"], one_record["gradient_accumulation_steps"]) == (1, 2)
        assert record["effective_batch"] == one_record["effective_batch"] == 4
        assert steps == one_steps  # the same number of optimiser steps, so the same schedule
        card = (run_dir / "epoch-3" / "README.md").read_text()
        assert "- processes: 2" in card and "- effective_batch: 4" in card
    # the main process reports; the other says nothing unless something goes wrong
    assert result.stdout.count("selected epoch-3") == 2
    assert "[rank 1] INFO" not in result.stderr


def test_kept_epochs_of_a_two_process_run_are_servable(two_process_run):
    runs, _, _ = two_process_run
    for name in ("lima-1000", "lima-1030"):
        assert check_servable(runs / name / "epoch-3") == []


def test_only_the_main_process_writes_files(two_process_run):
    _, audit_log, _ = two_process_run
    seen = writes(audit_log)
    assert set(seen) == {"rank-0", "rank-1"}, "the audit hook did not load in both processes"
    written = {event["path"] for event in seen["rank-0"]}
    for name in ("lima-1000", "lima-1030"):
        assert f"test/{name}/run.yaml" in written and f"test/{name}/train.log" in written
        assert f"test/{name}/epoch-3/README.md" in written
    assert not_resume_state(seen["rank-1"]) == [], f"rank 1 wrote: {not_resume_state(seen['rank-1'])[:5]}"


def not_resume_state(events: list[dict]) -> list[dict]:
    """Writes outside checkpoints/, the trainer's resume state, where every rank saves its own share (its RNG
    state; its shards under FSDP or ZeRO): everything else is for the main process alone."""
    return [event for event in events if "/checkpoints/" not in event["path"]]


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def test_a_two_process_run_killed_mid_epoch_resumes_and_completes(tmp_path):
    output, audit_log = tmp_path / "runs", tmp_path / "audit"
    args = ("--model", "dialogue", "--set", "epochs=6", "--set", "keep_epochs=[5,6]")
    run_dir = output / "test" / "lima-1030"
    process = subprocess.Popen(
        torchrun(output, audit_log, *args),
        cwd=REPO,
        env=env_for(output, audit_log),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not list((run_dir / "checkpoints").glob("checkpoint-*/trainer_state.json")) and time.time() < deadline:
        assert process.poll() is None, "the run ended before its first checkpoint"
        time.sleep(0.05)
    for pid in [process.pid, *descendants(process.pid)]:  # the launcher and every worker, all at once
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait()
    assert list((run_dir / "checkpoints").glob("checkpoint-*")), "the run never reached its first checkpoint"
    assert not list(run_dir.glob("epoch-*"))  # killed before the kept window
    assert yaml.safe_load((run_dir / "run.yaml").read_text())["status"] == "running"

    refused = run(output, audit_log, *args)
    assert refused.returncode != 0
    assert refused.stderr.count("already holds this run (running): pass --resume") == 1  # said once, by rank 0
    resumed = run(output, audit_log, *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resuming from checkpoint-" in resumed.stderr
    assert sorted(p.name for p in run_dir.glob("epoch-*")) == ["epoch-5", "epoch-6"]
    assert yaml.safe_load((run_dir / "run.yaml").read_text())["status"] == "complete"
    steps, records = batch_record(run_dir)
    assert steps == 12 and {r["effective_batch"] for r in records} == {4}  # 8 examples / 4 x 6 epochs
    assert not_resume_state(writes(audit_log).get("rank-1", [])) == []
    assert check_servable(run_dir / "epoch-6") == []
