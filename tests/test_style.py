"""The code style DESIGN.md asks for: ruff clean and ruff formatted."""

import subprocess
import sys

from conftest import REPO


def test_ruff_check_and_format():
    for args in (["check", "."], ["format", "--check", "."]):
        result = subprocess.run([sys.executable, "-m", "ruff", *args], cwd=REPO, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
