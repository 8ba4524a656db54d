"""demo/serve: the compose file for two TGI servers on one GPU, serve.sh around it, and B's memory fraction.

No docker or GPU here: compose.yaml is checked as data, and serve.sh runs against fake `docker`, `nvidia-smi`
and `curl` commands that log how they were called.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from demo.serve.fraction import main as fraction_main
from demo.serve.fraction import second_server_fraction

SERVE = REPO / "demo" / "serve"
SCRIPT = SERVE / "serve.sh"
BASH = shutil.which("bash") or "/bin/bash"
IMAGE = "ghcr.io/huggingface/text-generation-inference:3.3.7"

FAKE_DOCKER = """#!/bin/sh
echo "docker $* FRACTION_B=${FRACTION_B:-} MODEL_A_DIR=$MODEL_A_DIR MODEL_B_DIR=$MODEL_B_DIR" >> "$FAKE_LOG"
case "$*" in *" ps "*) echo "${FAKE_STATE:-running}" ;; esac
exit 0
"""
FAKE_NVIDIA_SMI = """#!/bin/sh
echo "nvidia-smi $*" >> "$FAKE_LOG"
echo "${FAKE_SMI:-40000, 81559}"
"""
FAKE_CURL = """#!/bin/sh
echo "curl $*" >> "$FAKE_LOG"
exit "${FAKE_HEALTH:-0}"
"""


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((SERVE / "compose.yaml").read_text())


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    """A folder of fake docker / nvidia-smi / curl to put first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(bin_dir / "docker", FAKE_DOCKER)
    _executable(bin_dir / "nvidia-smi", FAKE_NVIDIA_SMI)
    _executable(bin_dir / "curl", FAKE_CURL)
    return bin_dir


def _model(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def _run_dir(root: Path, name: str) -> Path:
    """runs/<recipe>/<name> with epoch-10 selected."""
    run = root / "runs" / "quick-cpu" / name
    _model(run / "epoch-10")
    (run / "selected").write_text("epoch-10\n")
    return run


def serve(*args: str, path: str, log: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PATH": path, "FAKE_LOG": str(log), "PYTHON": sys.executable, **env}
    for name in ("PORT_A", "PORT_B", "FRACTION_A", "FRACTION_B", "MARGIN_MIB", "GPU", "HEALTH_TIMEOUT"):
        if name not in env:
            full_env.pop(name, None)
    return subprocess.run([BASH, str(SCRIPT), *args], env=full_env, capture_output=True, text=True, timeout=30)


# compose.yaml


def test_compose_has_two_tgi_services_on_the_pinned_image(compose: dict) -> None:
    assert set(compose["services"]) == {"tgi-a", "tgi-b"}
    for service in compose["services"].values():
        assert service["image"] == "${TGI_IMAGE:-" + IMAGE + "}"
        assert service["shm_size"] == "1g"
        assert str(service["environment"]["HF_HUB_OFFLINE"]) == "1"
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia"
        assert "gpu" in device["capabilities"]
        assert device.get("count") == 1 or len(device["device_ids"]) == 1


@pytest.mark.parametrize(
    ("name", "port", "mount", "model_env", "fraction"),
    [
        ("tgi-a", "${BIND:-127.0.0.1}:${PORT_A:-8081}:80", "/models/a", "MODEL_A_DIR", "${FRACTION_A:-0.45}"),
        ("tgi-b", "${BIND:-127.0.0.1}:${PORT_B:-8082}:80", "/models/b", "MODEL_B_DIR", "${FRACTION_B:-0.9}"),
    ],
)
def test_compose_service_ports_mount_and_flags(
    compose: dict, name: str, port: str, mount: str, model_env: str, fraction: str
) -> None:
    service = compose["services"][name]
    assert service["ports"] == [port]
    (volume,) = service["volumes"]
    assert volume["type"] == "bind"
    assert volume["source"].startswith("${" + model_env)
    assert volume["target"] == mount
    assert volume["read_only"] is True
    command = service["command"]
    flags = {flag: value for flag, value in zip(command[::2], command[1::2], strict=True)}
    assert flags["--model-id"] == mount
    assert flags["--port"] == "80"
    assert flags["--max-input-tokens"] == "${MAX_INPUT_TOKENS:-1536}"
    assert flags["--max-total-tokens"] == "${MAX_TOTAL_TOKENS:-2048}"
    assert flags["--cuda-memory-fraction"] == fraction


def test_compose_healthcheck_and_b_waits_for_a(compose: dict) -> None:
    for service in compose["services"].values():
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD-SHELL"
        assert "http://localhost/health" in test[1]
        assert "python3" in test[1]  # curl is not guaranteed in the image
    assert compose["services"]["tgi-b"]["depends_on"] == {"tgi-a": {"condition": "service_healthy"}}
    assert "depends_on" not in compose["services"]["tgi-a"]


# fraction.py


def test_second_server_fraction_leaves_the_margin() -> None:
    total, margin = 81559, 2048
    fraction = second_server_fraction(40000, total, margin)
    assert fraction == pytest.approx(0.97489, abs=1e-5)
    # TGI's budget for B: free_now - (1 - fraction) * total = free_now - margin, whatever free_now is.
    for free in (10000, 40000, 80000):
        budget = free - (1 - second_server_fraction(free, total, margin)) * total
        assert budget == pytest.approx(free - margin)


def test_second_server_fraction_clamps() -> None:
    assert second_server_fraction(40000, 81559, 0) == 0.98
    assert second_server_fraction(40000, 81559, 500) == 0.98
    assert second_server_fraction(81559, 81559, 80000) == 0.05
    assert second_server_fraction(20000, 24576, 4096) == pytest.approx(1 - 4096 / 24576)


@pytest.mark.parametrize(("free", "total", "margin"), [(1000, 81559, 2048), (2048, 81559, 2048), (5, 0, 1), (9, 8, 1)])
def test_second_server_fraction_refuses_impossible_readings(free: float, total: float, margin: float) -> None:
    with pytest.raises(ValueError):
        second_server_fraction(free, total, margin)


def test_fraction_main_prints_rounded_down(capsys: pytest.CaptureFixture[str]) -> None:
    assert fraction_main(["40000", "81559", "2048"]) == 0
    assert capsys.readouterr().out == "0.9748\n"
    assert fraction_main(["1000", "81559", "2048"]) == 2
    assert capsys.readouterr().err.startswith("error: only 1000 MiB free")


# serve.sh


def test_serve_sh_is_valid_executable_bash() -> None:
    assert os.access(SCRIPT, os.X_OK)
    assert SCRIPT.read_text().startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in SCRIPT.read_text()
    result = subprocess.run([BASH, "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_serve_sh_missing_dir_fails_before_docker(tmp_path: Path, fake_bin: Path) -> None:
    log = tmp_path / "calls.log"
    good = _model(tmp_path / "good")
    path = f"{fake_bin}{os.pathsep}{os.environ['PATH']}"
    for args in ([str(tmp_path / "missing"), str(good)], [str(good), str(tmp_path / "missing")]):
        result = serve(*args, path=path, log=log)
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1
        assert "missing: no such directory" in result.stderr
        assert result.stdout == ""
    assert not log.exists()  # no docker, no nvidia-smi


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda root: [], "usage: demo/serve/serve.sh MODEL_A_DIR MODEL_B_DIR"),
        (lambda root: [root / "empty", root / "empty"], "not a servable model folder (no config.json)"),
        (lambda root: [root / "badrun", root / "badrun"], "names 'epoch-99', which is not a folder"),
    ],
)
def test_serve_sh_bad_arguments(tmp_path: Path, fake_bin: Path, setup, message: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "badrun").mkdir()
    (tmp_path / "badrun" / "selected").write_text("epoch-99")
    log = tmp_path / "calls.log"
    result = serve(*map(str, setup(tmp_path)), path=f"{fake_bin}{os.pathsep}{os.environ['PATH']}", log=log)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert message in result.stderr
    assert not log.exists()


def test_serve_sh_without_docker(tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for tool in ("dirname", "tr"):
        (bare / tool).symlink_to(shutil.which(tool))
    model = _model(tmp_path / "model")
    result = serve(str(model), str(model), path=str(bare), log=tmp_path / "calls.log")
    assert result.returncode == 2
    assert result.stderr == "serve.sh: error: docker not found: install Docker and the NVIDIA Container Toolkit\n"


def test_serve_sh_starts_a_then_sizes_and_starts_b(tmp_path: Path, fake_bin: Path) -> None:
    run_a, run_b = _run_dir(tmp_path, "lima-1000"), _run_dir(tmp_path, "lima-1030")
    log = tmp_path / "calls.log"
    result = serve(str(run_a), str(run_b), path=f"{fake_bin}{os.pathsep}{os.environ['PATH']}", log=log, GPU="1")
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    up_a = next(i for i, call in enumerate(calls) if "up -d tgi-a" in call)
    smi = next(i for i, call in enumerate(calls) if call.startswith("nvidia-smi"))
    up_b = next(i for i, call in enumerate(calls) if "up -d tgi-b" in call)
    assert up_a < smi < up_b
    assert calls[smi] == "nvidia-smi --id=1 --query-gpu=memory.free,memory.total --format=csv,noheader,nounits"
    assert f"MODEL_A_DIR={run_a / 'epoch-10'} MODEL_B_DIR={run_b / 'epoch-10'}" in calls[up_a]
    assert "FRACTION_B=0.9748 " in calls[up_b]
    assert any("127.0.0.1:8081/health" in call for call in calls[up_a:smi])  # loopback: where compose binds
    assert any("127.0.0.1:8082/health" in call for call in calls[up_b:])
    assert "fraction 0.9748" in result.stdout
    assert "python demo/app.py --left http://127.0.0.1:8081 --right http://127.0.0.1:8082" in result.stdout


def test_serve_sh_health_timeout(tmp_path: Path, fake_bin: Path) -> None:
    model = _model(tmp_path / "model")
    path = f"{fake_bin}{os.pathsep}{os.environ['PATH']}"
    result = serve(str(model), str(model), path=path, log=tmp_path / "calls.log", FAKE_HEALTH="7", HEALTH_TIMEOUT="0")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "tgi-a not healthy after 0s" in result.stderr
    stopped = serve(str(model), str(model), path=path, log=tmp_path / "calls.log", FAKE_HEALTH="7", FAKE_STATE="exited")
    assert stopped.returncode == 2
    assert "tgi-a stopped before it became healthy" in stopped.stderr


def test_serve_sh_refuses_when_a_left_too_little(tmp_path: Path, fake_bin: Path) -> None:
    model = _model(tmp_path / "model")
    path = f"{fake_bin}{os.pathsep}{os.environ['PATH']}"
    result = serve(str(model), str(model), path=path, log=tmp_path / "calls.log", FAKE_SMI="1500, 81559")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "only 1500 MiB free" in result.stderr
    assert "up -d tgi-b" not in (tmp_path / "calls.log").read_text()
