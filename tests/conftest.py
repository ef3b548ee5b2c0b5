"""Shared pytest setup: the repository root on sys.path and small script runners."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# A tiny configuration every end-to-end test shares: 400 steps, 40 observation times.
TINY = ["--tmax", "2", "--seed", "7"]
TINY_DATA = ["--npe", "12"]
TINY_TRAINING = ["--epochs", "2", "--n-test", "2", "--quiet"]


def run_script(name, *args, cwd):
    """Run a top-level script in a subprocess; returns the CompletedProcess."""
    env = dict(os.environ, PYTHONHASHSEED="0", MPLBACKEND="Agg")
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, name), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A generator run at the tiny size; returns its folder (data file inside)."""
    folder = tmp_path_factory.mktemp("tiny")
    result = run_script(
        "lorenz96_bilstm_gru_sparse.py", *TINY, *TINY_DATA, "--out", "gen", cwd=folder
    )
    assert result.returncode == 0, result.stderr
    return folder
