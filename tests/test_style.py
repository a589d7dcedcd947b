"""The project's one style (pyproject.toml's ``[tool.ruff]``: pyflakes, pycodestyle, isort, 120 columns)."""
import subprocess
import sys

from conftest import ROOT


def test_ruff_finds_nothing():
    proc = subprocess.run([sys.executable, '-m', 'ruff', 'check', '--no-cache', '--output-format', 'concise'],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'All checks passed' in proc.stdout
