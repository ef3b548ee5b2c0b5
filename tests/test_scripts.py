"""End-to-end runs of the generator, the five experiments and the comparison."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, TINY, TINY_DATA, TINY_TRAINING, run_script

from common import metrics

STATE_FILES = ["utrue.csv", "uobs.csv", "uw.csv"]
COMMON_FILES = [
    "model_bilstm_gru.h5",
    "training.log",
    "scaling.npz",
    "t.csv",
    "tobs.csv",
    "metrics.csv",
    "config.json",
    "series.png",
    "fields.png",
    "rmse.png",
    "loss.png",
] + STATE_FILES
NETWORK_FILES = {
    1: ["ulstm.csv"],
    2: ["ulstm.csv"],
    3: ["ulstm.csv"],
    4: ["ulstm1.csv", "ulstm2.csv", "data_4.npz"],
}
METHODS = ["free run", "EnKF", "DEnKF", "EKF", "nudging"]


def test_generator_writes_plain_arrays(tiny_data):
    with np.load(tiny_data / "lstm_data_sparse.npz", allow_pickle=False) as data:
        assert data["utrue"].shape == (40, 401)
        assert data["uobs"].shape == (40, 41)
        assert data["uwe"].shape == (40, 12, 401)
        assert float(data["setting_forcing"]) == 10.0 and int(data["setting_nf"]) == 10
        # observations are the truth every nf steps plus noise of variance 1e-2
        noise = data["uobs"] - data["utrue"][:, ::10]
        assert 0.07 < noise.std() < 0.13
        # priors start from the true state plus noise of variance 1e-2
        start_error = data["uwe"][:, :, 0] - data["utrue"][:, :1]
        assert 0.07 < start_error.std() < 0.13
    for plot in ("truth.png", "series.png"):
        assert (tiny_data / "gen" / plot).stat().st_size > 0


def test_generator_is_reproducible(tiny_data, tmp_path):
    result = run_script(
        "lorenz96_bilstm_gru_sparse.py", *TINY, *TINY_DATA, "--out", "gen", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    with (
        np.load(tiny_data / "lstm_data_sparse.npz") as a,
        np.load(tmp_path / "lstm_data_sparse.npz") as b,
    ):
        assert a.files == b.files
        for key in a.files:
            assert np.array_equal(a[key], b[key]), key


def read_state(folder, name):
    return pd.read_csv(folder / name).to_numpy().T  # back to (ne, time)


@pytest.fixture(scope="module")
def experiment_runs(tiny_data):
    """Experiments 1-4 run once at the tiny size: number -> (result, folder)."""
    runs = {}
    for n in (1, 2, 3, 4):
        runs[n] = (
            run_script(
                f"da_bilstm_gru_{n}_sparse.py",
                *TINY,
                *TINY_TRAINING,
                "--out",
                f"e{n}",
                cwd=tiny_data,
            ),
            tiny_data / f"e{n}",
        )
    return runs


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_experiment_writes_every_file(experiment_runs, n):
    result, folder = experiment_runs[n]
    assert result.returncode == 0, result.stderr
    for name in COMMON_FILES + NETWORK_FILES[n]:
        assert (folder / name).stat().st_size > 0, name
    for name in STATE_FILES + NETWORK_FILES[n][:2]:
        if name.endswith(".csv"):
            rows = 41 if name == "uobs.csv" else 401
            assert read_state(folder, name).shape == (40, rows), name
    config = json.loads((folder / "config.json").read_text())
    assert config["observed_indices"] == [9, 19, 29, 39] and config["nt"] == 400
    log = pd.read_csv(folder / "training.log")
    assert len(log) == 2 and {"loss", "val_loss"} <= set(log.columns)
    assert not list(folder.parent.glob(".*partial*"))


@pytest.mark.parametrize("n", [1, 4])
def test_metrics_match_the_csv_files(experiment_runs, n):
    _, folder = experiment_runs[n]
    table = pd.read_csv(folder / "metrics.csv")
    truth = read_state(folder, "utrue.csv")
    files = {
        "free run": "uw.csv",
        "BiLSTM-GRU": "ulstm.csv",
        "BiLSTM-GRU V1": "ulstm1.csv",
        "BiLSTM-GRU V2": "ulstm2.csv",
    }
    expected = set(METHODS) | {m for m, f in files.items() if f in NETWORK_FILES[n]}
    assert set(table["method"]) == expected
    assert set(table["evaluation"]) == {"training truth", "unseen truths"}
    unseen = table[table["evaluation"] == "unseen truths"]
    assert (unseen["truths"] == 2).all() and unseen["RMSE std"].notna().all()
    for method, name in files.items():
        if method not in expected:
            continue
        row = table[
            (table["method"] == method) & (table["evaluation"] == "training truth")
        ]
        run = read_state(folder, name)
        for key, value in metrics(truth, run).items():
            assert np.isclose(row[key].item(), value, rtol=1e-5), (method, key)
        second = np.sqrt(np.mean((run - truth)[:, 200:] ** 2))
        assert np.isclose(row["RMSE 2nd half"].item(), second, rtol=1e-5)


def test_experiment_4_arrays(experiment_runs):
    _, folder = experiment_runs[4]
    with np.load(folder / "data_4.npz", allow_pickle=False) as data:
        assert data["tmesh"].shape == data["xmesh"].shape == (40, 401)
        assert np.allclose(data["ulstm1"], read_state(folder, "ulstm1.csv"), rtol=1e-8)
        assert np.allclose(data["ulstm2"], read_state(folder, "ulstm2.csv"), rtol=1e-8)
        assert data["oin"].tolist() == [9, 19, 29, 39]
        # V2 equals the free run between observation times
        between = np.arange(401) % 10 != 0
        assert np.allclose(data["ulstm2"][:, between], data["uw"][:, between])


RELOAD = """
import sys, numpy as np, pandas as pd
sys.path.insert(0, sys.argv[1])
import common
folder = sys.argv[2]
corrector = common.Corrector.load(folder)
obs = pd.read_csv(folder + "/uobs.csv").to_numpy().T[[9, 19, 29, 39]]
ulstm = pd.read_csv(folder + "/ulstm.csv").to_numpy().T
# Every correction in ulstm.csv is the state at step 10 j minus the RK4 forecast
# from step 10 j - 1; the reloaded network must predict the same corrections.
steps = np.arange(10, 401, 10)
prior = common.rk4(40, 0.005, ulstm[:, steps - 1], 10.0)
window = np.concatenate([prior, obs[:, 1:]]).T[:, None]
replay = np.abs(corrector(window).T - (ulstm[:, steps] - prior)).max()
model = common.load_model(folder + "/model_bilstm_gru.h5")
scaled = window * corrector.scaling["x_scale"] + corrector.scaling["x_min"]
keras_out = model.predict(scaled.astype("float32"), verbose=0)
print(replay, np.abs(keras_out - corrector.network(scaled)).max())
"""


def test_saved_model_reloads_in_a_fresh_process(experiment_runs):
    _, folder = experiment_runs[1]
    result = subprocess.run(
        [sys.executable, "-c", RELOAD, ROOT, str(folder)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    replay, keras_gap = map(float, result.stdout.split())
    assert replay < 1e-6  # the CSV keeps 10 significant digits
    assert keras_gap < 1e-6


def test_same_seed_gives_the_same_metrics(experiment_runs, tiny_data):
    again = run_script(
        "da_bilstm_gru_1_sparse.py",
        *TINY,
        *TINY_TRAINING,
        "--out",
        "again",
        cwd=tiny_data,
    )
    assert again.returncode == 0, again.stderr
    first = pd.read_csv(experiment_runs[1][1] / "metrics.csv")
    pd.testing.assert_frame_equal(
        first, pd.read_csv(tiny_data / "again" / "metrics.csv")
    )


def test_experiment_5_study(tiny_data):
    result = run_script(
        "da_bilstm_gru_5_sparse.py",
        *TINY,
        *TINY_TRAINING,
        "--me-list",
        "3",
        "8",
        "--out",
        "e5",
        cwd=tiny_data,
    )
    assert result.returncode == 0, result.stderr
    folder = tiny_data / "e5"
    summary = pd.read_csv(folder / "summary.csv")
    assert sorted(set(summary["me"])) == [3, 8]
    assert (folder / "rmse_vs_me.png").stat().st_size > 0
    for me in (3, 8):
        assert (folder / f"me_{me}" / "model_bilstm_gru.h5").exists()
        assert (folder / f"me_{me}" / "ulstm.csv").exists()
    config = json.loads((folder / "me_3" / "config.json").read_text())
    assert config["observed_indices"] == [12, 25, 38]


def test_compare_methods(tiny_data):
    result = run_script(
        "compare_methods.py",
        *TINY,
        *TINY_TRAINING,
        "--me-list",
        "4",
        "--train-truths",
        "6",
        "--out",
        "cmp",
        cwd=tiny_data,
    )
    assert result.returncode == 0, result.stderr
    summary = pd.read_csv(tiny_data / "cmp" / "summary.csv")
    networks = {"BiLSTM-GRU same-trajectory", "BiLSTM-GRU many-truths"}
    assert set(summary["method"]) == set(METHODS) | networks
    for mode in ("same-trajectory", "many-truths"):
        assert (tiny_data / "cmp" / "me_4" / mode / "model_bilstm_gru.h5").exists()
    # every method met the same truths: the free runs agree with experiment 1's
    free = summary[summary["method"] == "free run"].reset_index(drop=True)
    assert len(free) == 2 and free["RMSE"].notna().all()
