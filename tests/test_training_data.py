"""Observation indices, training windows and training pairs."""

import numpy as np
import pytest

from common import (
    Settings,
    UserError,
    create_training_data_lstm,
    integrate,
    many_truth_pairs,
    observation_indices,
    same_trajectory_pairs,
)


@pytest.mark.parametrize(
    "me, expected",
    [
        (2, [19, 39]),
        (3, [12, 25, 38]),
        (4, [9, 19, 29, 39]),
        (8, [4, 9, 14, 19, 24, 29, 34, 39]),
        (20, list(range(1, 40, 2))),
    ],
)
def test_observation_indices(me, expected):
    assert observation_indices(40, me).tolist() == expected


@pytest.mark.parametrize("me", [0, 41, -1])
def test_observation_indices_reject_bad_counts(me):
    with pytest.raises(UserError, match="me"):
        observation_indices(40, me)


@pytest.mark.parametrize("lookback", [1, 3])
def test_windows_shapes_and_label_alignment(lookback):
    # Two series of 6 times; feature = 100*series + time, label = -(that value).
    series, times = np.meshgrid(np.arange(2), np.arange(6), indexing="ij")
    value = 100.0 * series + times
    features = np.stack([value, value + 0.5], axis=-1)  # (2, 6, 2)
    labels = -value[..., None]  # (2, 6, 1)
    X, y = create_training_data_lstm(features, labels, lookback)
    n = 6 - lookback + 1
    assert X.shape == (2 * n, lookback, 2) and y.shape == (2 * n, 1)
    for i in range(2 * n):
        s, end = divmod(i, n)
        end += lookback - 1
        assert X[i, :, 0].tolist() == [
            100 * s + t for t in range(end - lookback + 1, end + 1)
        ]
        assert y[i, 0] == -(100 * s + end)  # label at the window's last time


def test_windows_reject_bad_lookback():
    with pytest.raises(UserError, match="lookback"):
        create_training_data_lstm(np.zeros((5, 2)), np.zeros((5, 1)), 6)


def test_same_trajectory_pairs_align_priors_truth_and_observations():
    s = Settings(ne=8, tmax=0.1, nf=5)  # nt = 20, nb = 4
    rng = np.random.default_rng(0)
    data = {
        "utrue": rng.normal(size=(8, 21)),
        "uobs": rng.normal(size=(8, 5)),
        "uwe": rng.normal(size=(8, 3, 21)),
    }
    oin = np.array([1, 7])
    features, labels = same_trajectory_pairs(data, oin, s)
    assert features.shape == (3, 5, 10) and labels.shape == (3, 5, 8)
    m, j = 2, 3  # member 2, observation 3 at step 15
    assert np.array_equal(features[m, j, :8], data["uwe"][:, m, 15])
    assert np.array_equal(features[m, j, 8:], data["uobs"][oin, j])
    assert np.array_equal(labels[m, j], data["utrue"][:, 15] - data["uwe"][:, m, 15])


def test_same_trajectory_pairs_from_observation_times_only():
    s = Settings(ne=8, tmax=0.1, nf=5)
    rng = np.random.default_rng(1)
    uwe = rng.normal(size=(8, 3, 21))
    full = {"utrue": rng.normal(size=(8, 21)), "uobs": rng.normal(size=(8, 5))}
    sparse = dict(full, uwe=uwe[..., ::5], setting_uwe_every=np.array(5))
    oin = np.array([3])
    for a, b in zip(
        same_trajectory_pairs(dict(full, uwe=uwe), oin, s),
        same_trajectory_pairs(sparse, oin, s),
    ):
        assert np.array_equal(a, b)


def test_many_truth_pairs_priors_are_short_forecasts():
    s = Settings(ne=8, tmax=0.1, nf=5, tini=0.5)
    oin = np.array([3, 7])
    features, labels = many_truth_pairs(
        s, oin, 4, (1e-6, 1e-6), np.random.default_rng(2)
    )
    assert features.shape == (4, 5, 10) and labels.shape == (4, 5, 8)
    prior = features[..., :8]
    truth = prior + labels
    # Priors after t=0 come from nearly exact starts, so they match the truth closely,
    # and the truth itself follows the model from one observation time to the next.
    assert np.abs(labels[:, 1:]).max() < 1e-4
    step = integrate(truth[:, 0].T, 5, s.dt, s.forcing)[..., -1].T
    assert np.allclose(step, truth[:, 1], atol=1e-12)
    # The observed values are the truth at the observed variables plus noise.
    noise = features[..., 8:] - truth[..., oin]
    assert 0.05 < noise.std() < 0.15  # var_obs = 1e-2
