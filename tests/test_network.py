"""Huber loss, NumPy forward pass, network nudging and metrics."""

import keras
import numpy as np
import pytest

from common import (
    Corrector,
    Diverged,
    each_or_nan,
    Settings,
    assimilate_network,
    build_model,
    huber_loss,
    integrate,
    metrics,
    numpy_network,
    rk4,
    scale_training_set,
    scaling_factors,
)


def test_huber_loss_hand_values():
    # delta = 1: error 0.5 -> 0.5 * 0.25 = 0.125; error 3 -> 1 * (3 - 0.5) = 2.5
    y_true = np.array([[0.0, 0.0]])
    y_pred = np.array([[0.5, -3.0]])
    assert np.isclose(float(huber_loss(y_true, y_pred)[0]), (0.125 + 2.5) / 2)
    assert np.isclose(float(huber_loss(y_true, y_true)[0]), 0.0)


def test_huber_loss_equals_keras_huber():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.normal(size=(2, 64, 40)) * 2.0
    ours = float(keras.ops.mean(huber_loss(y_true, y_pred)))
    theirs = float(keras.losses.Huber(delta=1.0)(y_true, y_pred))
    assert np.isclose(ours, theirs, rtol=1e-6)


@pytest.mark.parametrize(
    "lookback, dtype", [(1, "float32"), (3, "float32"), (2, "float64")]
)
def test_numpy_forward_equals_keras(lookback, dtype):
    keras.utils.set_random_seed(1)
    model = build_model(12, 8, lookback, (16, 12, 10), "huber_loss", "mae", dtype)
    # Random weights are too small to exercise the ReLUs; scale them up a little.
    for layer in model.layers:
        layer.set_weights([2.0 * w for w in layer.get_weights()])
    x = np.random.default_rng(2).normal(size=(50, lookback, 12)).astype(dtype)
    expected = model.predict(x, verbose=0)
    got = numpy_network(model)(x.astype(float))
    assert np.abs(expected).max() > 0.1
    assert np.allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert {w.dtype for w in model.get_weights()} == {np.dtype(dtype)}


def test_corrector_undoes_the_scaling():
    keras.utils.set_random_seed(3)
    model = build_model(5, 3, 1, (4, 4, 4), "huber_loss", "mae")
    rng = np.random.default_rng(4)
    X, y = rng.normal(size=(30, 1, 5)) * 3, rng.normal(size=(30, 3)) + 5
    Xs, _, scaler_x, scaler_y = scale_training_set(X, y)
    expected = scaler_y.inverse_transform(model.predict(Xs, verbose=0))
    assert np.allclose(
        Corrector(model, scaling_factors(scaler_x, scaler_y))(X), expected, atol=1e-5
    )


SMALL = Settings(ne=8, tmax=0.2, nf=5)  # nt = 40, nb = 8


def observed_setup(batch=3):
    rng = np.random.default_rng(5)
    x0 = 8.0 + rng.normal(size=(8, batch))
    y = rng.normal(size=(2, batch, SMALL.nb + 1))
    return x0, y


def test_zero_correction_is_the_free_run():
    x0, y = observed_setup()
    zero = lambda window: np.zeros((window.shape[0], 8))  # noqa: E731
    for scheme in ("feedback", "copy"):
        run = assimilate_network(zero, x0, y, SMALL, 1, scheme)
        assert np.array_equal(run, integrate(x0, SMALL.nt, SMALL.dt, SMALL.forcing))


def test_feedback_and_copy_schemes_with_a_constant_correction():
    x0, y = observed_setup(batch=2)
    shift = np.linspace(-0.1, 0.1, 8)
    constant = lambda window: np.tile(shift, (window.shape[0], 1))  # noqa: E731
    s = SMALL
    # feedback: hand-written loop that adds the correction at steps 5, 10, ...
    x, expected = x0.copy(), [x0]
    for k in range(1, s.nt + 1):
        x = rk4(s.ne, s.dt, x, s.forcing)
        if k % s.nf == 0:
            x = x + shift[:, None]
        expected.append(x)
    run = assimilate_network(constant, x0, y, s, 1, "feedback")
    assert np.allclose(run, np.stack(expected, -1), atol=1e-12)
    # copy: the free run, shifted at observation times only
    free = integrate(x0, s.nt, s.dt, s.forcing)
    free[..., s.nf :: s.nf] += shift[:, None, None]
    assert np.allclose(
        assimilate_network(constant, x0, y, s, 1, "copy"), free, atol=1e-12
    )


def test_correction_sees_the_observation_of_its_time():
    x0, y = observed_setup(batch=1)
    seen = []

    def record(window):
        seen.append(window[0, -1, 8:].copy())
        return np.zeros((1, 8))

    assimilate_network(record, x0, y, SMALL, 2)
    assert np.array_equal(np.array(seen), y[:, 0, 1:].T)  # observations 1..nb


def test_metrics_hand_case():
    truth = np.array([[1.0, 2.0], [3.0, 4.0]])  # mean 2.5, SStot = 5
    estimate = truth + np.array([[1.0, -1.0], [0.0, 2.0]])  # SSres = 6
    m = metrics(truth, estimate)
    assert np.isclose(m["MAE"], 1.0) and np.isclose(m["MSE"], 1.5)
    assert np.isclose(m["RMSE"], np.sqrt(1.5)) and np.isclose(m["R2"], 1 - 6 / 5)


def test_a_blow_up_gives_nan_for_that_truth_only():
    x0, y = observed_setup(batch=4)

    def run(x0, y):  # blows up on truths whose first variable is above 8
        if (x0[0] > 8.0).any():
            raise Diverged("the state blew up at step 3 (t=0.015)")
        return np.repeat(x0[..., None], SMALL.nt + 1, -1)

    x0[0] = [7.0, 9.0, 7.5, 9.5]
    with pytest.warns(
        UserWarning, match="blew up on 2 of 4 truths; their trajectories are NaN"
    ):
        result = each_or_nan(run, x0, y, SMALL.nt, "test")
    assert np.isnan(result[:, [1, 3]]).all()
    assert np.array_equal(result[:, [0, 2], 0], x0[:, [0, 2]])
