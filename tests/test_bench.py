"""The speed benchmark: it runs, and its naive references compute what ours compute."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks", "bench.py")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_prints_the_table(tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg")
    done = subprocess.run(
        [sys.executable, BENCH, "--quick", "--repeats", "1", "--csv", "t.csv"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "stage" in done.stdout and "reference (s)" in done.stdout
    assert "truth + spin-up" in done.stdout
    assert (tmp_path / "t.csv").read_text().startswith("table,stage")


@pytest.mark.parametrize("shape", [(40,), (12, 3)])
def test_naive_integration_equals_integrate(bench, shape):
    rng = np.random.default_rng(0)
    u0 = 8.0 + rng.standard_normal(shape)
    ours = common.integrate(u0, 500, 0.005, 10.0)
    flat = u0.reshape(shape[0], -1)
    naive = np.stack(
        [
            bench.naive_integrate(flat[:, m], 500, 0.005, 10.0)
            for m in range(flat.shape[1])
        ],
        axis=1,
    ).reshape(ours.shape)
    np.testing.assert_allclose(naive, ours, rtol=1e-12, atol=1e-12)


def test_naive_spin_up_equals_spin_up(bench):
    s = common.Settings(ne=12, tini=1.0)
    np.testing.assert_allclose(bench.naive_spin_up(s), common.spin_up(s), rtol=1e-12)


@pytest.mark.parametrize("lookback", [1, 3])
def test_naive_training_set_equals_ours(bench, lookback):
    s = common.Settings(ne=8, tmax=0.5)
    rng = np.random.default_rng(1)
    oin = common.observation_indices(s.ne, 2)
    u0 = common.spin_up(s)
    utrue = common.integrate(u0, s.nt, s.dt, s.forcing)
    starts = common.perturb(np.repeat(u0[:, None], 5, 1), s.var_init, rng)
    data = {
        "utrue": utrue,
        "uobs": common.observe(utrue, s, rng),
        "uwe": common.integrate(starts, s.nt, s.dt, s.forcing),
    }
    X, y = bench.windows(data, oin, s, lookback)
    X_naive, y_naive = bench.naive_training_set(data, oin, s, lookback)
    np.testing.assert_array_equal(X_naive, X)
    np.testing.assert_array_equal(y_naive, y)
