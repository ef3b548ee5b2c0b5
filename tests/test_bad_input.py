"""Bad input: a one-line error, a non-zero exit and nothing half-written."""

import numpy as np
import pytest
from conftest import TINY, TINY_DATA, run_script

GENERATOR = "lorenz96_bilstm_gru_sparse.py"
EXPERIMENT = "da_bilstm_gru_1_sparse.py"


def assert_clean_failure(result, folder, *words):
    """Exit status 2, one 'error:' line naming the words, no traceback, no output."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    left = sorted(p.name for p in folder.rglob("*") if p.name != "input.npz")
    assert not [name for name in left if "partial" in name or name.endswith(".npz")]
    assert not (folder / "results").exists()


@pytest.mark.parametrize(
    "args, words",
    [
        (["--me", "0"], ["me", "1..ne=40", "0"]),
        (["--me", "41"], ["me", "41"]),
        (["--nf", "0"], ["nf", "0"]),
        (["--nf", "401"], ["nf", "nt=400", "401"]),
        (["--ne", "3"], ["ne", "at least 4", "3"]),
        (["--dt", "0"], ["dt", "positive"]),
        (["--dt", "-0.1"], ["dt", "positive"]),
        (["--npe", "1"], ["npe", "at least 2", "EnKF"]),
        (["--dt", "0.1"], ["blew up at step"]),
        (["--uwe-dtype", "int8"], ["uwe_dtype"]),
        (["--seed", "-1"], ["seed"]),
        (["--data", "nowhere/x.npz"], ["nowhere", "does not exist"]),
    ],
)
def test_generator_rejects(tmp_path, args, words):
    result = run_script(GENERATOR, *TINY, *TINY_DATA, *args, cwd=tmp_path)
    assert_clean_failure(result, tmp_path, *words)


def test_missing_data_file_says_to_run_the_generator(tmp_path):
    result = run_script(EXPERIMENT, *TINY, "--data", "none.npz", cwd=tmp_path)
    assert_clean_failure(result, tmp_path, "none.npz", GENERATOR)


def test_unreadable_data_file(tmp_path):
    (tmp_path / "input.npz").write_bytes(b"this is not an npz archive")
    result = run_script(EXPERIMENT, *TINY, "--data", "input.npz", cwd=tmp_path)
    assert_clean_failure(result, tmp_path, "cannot read", "input.npz")


def copy_with(tiny_data, folder, **changes):
    """The tiny data file with some arrays replaced, written as input.npz."""
    with np.load(tiny_data / "lstm_data_sparse.npz") as data:
        arrays = {key: data[key] for key in data.files}
    arrays.update(changes)
    np.savez(folder / "input.npz", **arrays)


def test_settings_differ_from_the_data(tiny_data, tmp_path):
    copy_with(tiny_data, tmp_path, setting_forcing=np.array(8.0))
    result = run_script(EXPERIMENT, *TINY, "--data", "input.npz", cwd=tmp_path)
    assert_clean_failure(result, tmp_path, "forcing=8", "forcing=10")


def test_nan_in_the_data(tiny_data, tmp_path):
    with np.load(tiny_data / "lstm_data_sparse.npz") as data:
        utrue = data["utrue"].copy()
    utrue[3, 17] = np.nan
    copy_with(tiny_data, tmp_path, utrue=utrue)
    result = run_script(EXPERIMENT, *TINY, "--data", "input.npz", cwd=tmp_path)
    assert_clean_failure(result, tmp_path, "utrue", "NaN")


def test_data_that_are_not_numbers(tiny_data, tmp_path):
    copy_with(tiny_data, tmp_path, uobs=np.array(["a", "b"]))
    result = run_script(EXPERIMENT, *TINY, "--data", "input.npz", cwd=tmp_path)
    assert_clean_failure(result, tmp_path, "uobs", "numbers")


def test_data_path_is_a_folder(tmp_path):
    (tmp_path / "folder").mkdir()
    result = run_script(EXPERIMENT, *TINY, "--data", "folder", cwd=tmp_path)
    assert_clean_failure(result, tmp_path, "folder", "not a data file")


def test_wrong_shape_in_the_data(tiny_data, tmp_path):
    with np.load(tiny_data / "lstm_data_sparse.npz") as data:
        uobs = data["uobs"][:, :-1]
    copy_with(tiny_data, tmp_path, uobs=uobs)
    result = run_script(EXPERIMENT, *TINY, "--data", "input.npz", cwd=tmp_path)
    assert_clean_failure(result, tmp_path, "uobs", "shape")


@pytest.mark.parametrize(
    "script, args, words",
    [
        (EXPERIMENT, ["--me", "0"], ["me", "0"]),
        (EXPERIMENT, ["--training", "magic"], ["training", "magic"]),
        (EXPERIMENT, ["--epochs", "0"], ["epochs"]),
        (EXPERIMENT, ["--n-test", "-1"], ["n_test"]),
        (EXPERIMENT, ["--units", "80", "80"], ["units"]),
        (EXPERIMENT, ["--units", "0", "80", "80"], ["units"]),
        (EXPERIMENT, ["--metric", "foo"], ["metric", "foo"]),
        (EXPERIMENT, ["--prior-spread", "1", "0.1"], ["prior_spread"]),
        ("da_bilstm_gru_5_sparse.py", ["--me-list", "4", "99"], ["me", "99"]),
        ("compare_methods.py", ["--trainings", "magic"], ["trainings", "magic"]),
    ],
)
def test_experiments_reject(tiny_data, tmp_path, script, args, words):
    data = str(tiny_data / "lstm_data_sparse.npz")
    result = run_script(script, *TINY, "--data", data, *args, cwd=tmp_path)
    assert_clean_failure(result, tmp_path, *words)


def test_failed_run_keeps_the_earlier_result(tiny_data, tmp_path):
    out = tmp_path / "results" / "generator"
    ok = run_script(GENERATOR, *TINY, *TINY_DATA, "--out", str(out), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    before = sorted(p.name for p in out.iterdir())
    bad = run_script(
        GENERATOR, *TINY, *TINY_DATA, "--dt", "0.1", "--out", str(out), cwd=tmp_path
    )
    assert bad.returncode == 2
    assert sorted(p.name for p in out.iterdir()) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["generator"]
