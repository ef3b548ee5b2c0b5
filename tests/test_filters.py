"""Tests of the classical filter baselines in common.py.

The expected values come from code written here, not from common.py: finite
differences for the Jacobian, a plain Kalman filter for the linear Gaussian case,
closed-form scalar updates, integrate() for runs without observations, and the
Gaspari-Cohn polynomial evaluated by hand.
"""

import warnings

import numpy as np
import pytest

from common import (
    BASELINES,
    Settings,
    UserError,
    denkf_analysis,
    ekf_analysis,
    enkf_analysis,
    gaspari_cohn,
    inflate,
    integrate,
    localization_matrix,
    ring_distance,
    rk4,
    rk4_jacobian,
    rmse_second_half,
    run_baselines,
    run_denkf,
    run_ekf,
    run_enkf,
    run_free,
    run_nudging,
    spin_up,
)

ANALYSES = {"stochastic": enkf_analysis, "denkf": denkf_analysis}
ENSEMBLE_RUNNERS = {"stochastic": run_enkf, "denkf": run_denkf}

# A small linear model x -> M x, observed at LINEAR_OIN, with P0 = I and R = 0.5 I.
M_LINEAR = np.array(
    [
        [0.90, 0.20, 0.00, 0.00],
        [-0.20, 0.90, 0.10, 0.00],
        [0.00, 0.10, 0.95, 0.20],
        [0.10, 0.00, -0.20, 0.90],
    ]
)
LINEAR_OIN = np.array([0, 2])
LINEAR = Settings(ne=4, dt=1.0, tmax=20.0, nf=2, var_obs=0.5, var_init=1.0)
LINEAR_Q = 0.05  # model-noise variance per step of the linear truth and filters


def linear_model(M):
    """Model pair (step, jacobian) of the linear map x -> M x."""

    def step(u):
        return np.tensordot(M, u, axes=1)

    def jacobian(u):
        return np.broadcast_to(M, u.shape[1:] + M.shape)

    return step, jacobian


def linear_problem(nbatch, seed=0):
    """Start states (4, nbatch) and observations (2, nbatch, nb+1) of a noisy truth."""
    rng = np.random.default_rng(seed)
    s = LINEAR
    x = rng.standard_normal((s.ne, nbatch))
    truth = [x]
    for _ in range(s.nt):
        x = M_LINEAR @ x + np.sqrt(LINEAR_Q) * rng.standard_normal(x.shape)
        truth.append(x)
    truth = np.stack(truth, -1)
    y = truth[LINEAR_OIN, :, :: s.nf]
    y = y + np.sqrt(s.var_obs) * rng.standard_normal(y.shape)
    x0 = truth[..., 0] + np.sqrt(s.var_init) * rng.standard_normal((s.ne, nbatch))
    return x0, y


def kalman_filter(x0, y, q, inflation=1.0, half_gain_covariance=False):
    """Plain Kalman filter on the linear problem for one truth: means (4, nt+1).

    half_gain_covariance uses the DEnKF's covariance (I - KH/2) P (I - KH/2)^T.
    """
    s, M = LINEAR, M_LINEAR
    eye = np.eye(s.ne)
    H = eye[LINEAR_OIN]
    R = s.var_obs * np.eye(len(LINEAR_OIN))
    x, P = x0.copy(), s.var_init * eye
    means = [x]
    for k in range(1, s.nt + 1):
        x, P = M @ x, M @ P @ M.T + q * eye
        if k % s.nf == 0:
            K = P @ H.T @ np.linalg.inv(H @ P @ H.T + R)
            x = x + K @ (y[:, k // s.nf] - H @ x)
            if half_gain_covariance:
                P = (eye - 0.5 * K @ H) @ P @ (eye - 0.5 * K @ H).T
            else:
                P = (eye - K @ H) @ P
            P = inflation**2 * P
        means.append(x)
    return np.stack(means, -1)


def lorenz_problem(s, me_oin, nbatch, seed):
    """Truth (ne, nbatch, nt+1), start states and observations for Lorenz-96."""
    rng = np.random.default_rng(seed)
    truth = integrate(spin_up(s, rng, nbatch), s.nt, s.dt, s.forcing)
    y = truth[me_oin][..., :: s.nf]
    y = y + np.sqrt(s.var_obs) * rng.standard_normal(y.shape)
    x0 = truth[..., 0] + np.sqrt(s.var_init) * rng.standard_normal(truth.shape[:-1])
    return truth, x0, y


# %% Jacobian of the RK4 step


@pytest.mark.parametrize("shape", [(40,), (40, 3), (8, 2, 3)])
@pytest.mark.parametrize("dt", [0.005, 0.05])
def test_rk4_jacobian_matches_central_differences(shape, dt):
    rng = np.random.default_rng(1)
    ne, forcing, h = shape[0], 10.0, 1e-5
    u = forcing + 3.0 * rng.standard_normal(shape)
    fd = np.empty(shape[1:] + (ne, ne))
    for j in range(ne):
        du = np.zeros(shape)
        du[j] = h
        diff = rk4(ne, dt, u + du, forcing) - rk4(ne, dt, u - du, forcing)
        fd[..., :, j] = np.moveaxis(diff / (2 * h), 0, -1)
    M = rk4_jacobian(ne, dt, u, forcing)
    assert M.shape == shape[1:] + (ne, ne)
    np.testing.assert_allclose(M, fd, rtol=0, atol=1e-6)


# %% Single analyses


@pytest.mark.parametrize("factor", [0.5, 1.0, 1.3, 2.0])
def test_inflate_keeps_mean_and_scales_spread(factor):
    E = np.random.default_rng(2).standard_normal((5, 3, 7)) + 4.0
    Ei = inflate(E, factor)
    np.testing.assert_allclose(Ei.mean(-1), E.mean(-1), rtol=0, atol=1e-12)
    np.testing.assert_allclose(Ei.std(-1), factor * E.std(-1), rtol=1e-12)


@pytest.mark.parametrize("kind", ["stochastic", "denkf"])
def test_scalar_update_is_p_over_p_plus_r(kind):
    rng = np.random.default_rng(3)
    N, P, R, y = 20000, 2.0, 0.5, np.array([2.5])
    E = 1.0 + np.sqrt(P) * rng.standard_normal((1, N))
    Ea = ANALYSES[kind](E, y, np.array([0]), R, rng)
    xbar, Ps = E.mean(), E.var(ddof=1)
    increment = Ea.mean() - xbar
    # With the sample variance the mean update is exact (the perturbations of the
    # stochastic EnKF are centred over the members).
    assert increment == pytest.approx(Ps / (Ps + R) * (y[0] - xbar), rel=1e-10)
    # Against the true P the gain P/(P+R) is off by R/(P+R)^2 (Ps - P), and the
    # standard error of Ps is P sqrt(2/(N-1)); allow 5 of those.
    se = abs(y[0] - xbar) * R / (P + R) ** 2 * P * np.sqrt(2 / (N - 1))
    assert abs(increment - P / (P + R) * (y[0] - xbar)) < 5 * se


def test_denkf_scalar_variance_is_exact_given_sample():
    rng = np.random.default_rng(4)
    P, R = 2.0, 0.5
    E = np.sqrt(P) * rng.standard_normal((1, 500))
    Ps = E.var(ddof=1)
    Ea = denkf_analysis(E, np.array([0.3]), np.array([0]), R)
    k = Ps / (Ps + R)
    assert Ea.var(ddof=1) == pytest.approx((1 - 0.5 * k) ** 2 * Ps, rel=1e-10)


def test_stochastic_scalar_variance_within_sampling_error():
    rng = np.random.default_rng(5)
    N, P, R = 20000, 2.0, 0.5
    E = np.sqrt(P) * rng.standard_normal((1, N))
    Ea = enkf_analysis(E, np.array([0.3]), np.array([0]), R, rng)
    # The standard error of a sample variance of N draws is var sqrt(2/(N-1)); the
    # prior's P bounds the analysis variance PR/(P+R), so 5 of those is generous.
    tol = 5 * P * np.sqrt(2 / (N - 1))
    assert abs(Ea.var(ddof=1) - P * R / (P + R)) < tol


@pytest.mark.parametrize("kind", ["stochastic", "denkf"])
def test_ensemble_analysis_matches_kalman_mean_and_covariance(kind):
    rng = np.random.default_rng(6)
    N, r, ne = 20000, 0.5, 4
    L = np.tril(rng.standard_normal((ne, ne))) + 2 * np.eye(ne)
    B, xb = L @ L.T / 4, rng.standard_normal(ne)
    y = xb[LINEAR_OIN, None] + rng.standard_normal((2, 3))  # 3 batched truths
    E = xb[:, None, None] + np.einsum(
        "ij,jbn->ibn", L / 2, rng.standard_normal((ne, 3, N))
    )
    Ea = ANALYSES[kind](E, y, LINEAR_OIN, r, rng)
    H = np.eye(ne)[LINEAR_OIN]
    K = B @ H.T @ np.linalg.inv(H @ B @ H.T + r * np.eye(2))
    if kind == "denkf":  # the DEnKF's covariance is not the Kalman one
        Pa = (np.eye(ne) - 0.5 * K @ H) @ B @ (np.eye(ne) - 0.5 * K @ H).T
    else:
        Pa = (np.eye(ne) - K @ H) @ B
    # Standard errors of a sample mean and covariance of N prior draws: the analysis
    # inherits errors of this size from the prior sample through the sample gain.
    se_mean = np.sqrt(np.diag(B) / N)
    se_cov = np.sqrt((np.outer(np.diag(B), np.diag(B)) + B**2) / N)
    for b in range(3):
        xa = xb + K @ (y[:, b] - H @ xb)
        assert np.all(np.abs(Ea[:, b].mean(-1) - xa) < 6 * se_mean)
        assert np.all(np.abs(np.cov(Ea[:, b]) - Pa) < 6 * se_cov)


def test_batched_analyses_equal_one_at_a_time():
    rng = np.random.default_rng(7)
    oin, r = np.array([1, 4]), 0.3
    E, y = rng.standard_normal((6, 2, 3, 10)), rng.standard_normal((2, 2, 3))
    x, C = rng.standard_normal((6, 2, 3)), rng.standard_normal((2, 3, 6, 6))
    P = C @ np.swapaxes(C, -1, -2)
    Ea = denkf_analysis(E, y, oin, r)
    xa, Pa = ekf_analysis(x, P, y, oin, r)
    for b in np.ndindex(2, 3):
        i = (slice(None),) + b
        np.testing.assert_allclose(
            Ea[i], denkf_analysis(E[i], y[i], oin, r), atol=1e-12
        )
        x1, P1 = ekf_analysis(x[i], P[b], y[i], oin, r)
        np.testing.assert_allclose(xa[i], x1, atol=1e-12)
        np.testing.assert_allclose(Pa[b], P1, atol=1e-12)


# %% Localization

L96_OIN = np.array([9, 19, 29, 39])  # the default observed variables of ne=40, me=4


@pytest.mark.parametrize("c", [0.4, 1.0, 2.5, 10.0])
def test_gaspari_cohn_hand_values(c):
    # With z = d / c the taper is, for z <= 1,
    #   -z^5/4 + z^4/2 + 5 z^3/8 - 5 z^2/3 + 1,
    # at z = 1: -1/4 + 1/2 + 5/8 - 5/3 + 1 = (-6 + 12 + 15 - 40 + 24)/24 = 5/24;
    # at z = 1/2: -1/128 + 1/32 + 5/64 - 5/12 + 1 = (-3 + 12 + 30 - 160 + 384)/384
    # = 263/384. For 1 < z < 2 it is
    #   z^5/12 - z^4/2 + 5 z^3/8 + 5 z^2/3 - 5 z + 4 - 2/(3 z),
    # at z = 1 again (2 - 12 + 15 + 40 - 120 + 96 - 16)/24 = 5/24; at z = 3/2, over
    # 1152: (729 - 2916 + 2430 + 4320 - 8640 + 4608 - 512)/1152 = 19/1152; at z = 2:
    # 8/3 - 8 + 5 + 20/3 - 10 + 4 - 1/3 = 0.
    assert gaspari_cohn(0.0, c) == 1.0
    assert gaspari_cohn(c, c) == pytest.approx(5 / 24, rel=1e-14)
    assert gaspari_cohn(c * (1 - 1e-9), c) == pytest.approx(5 / 24, rel=1e-8)
    assert gaspari_cohn(c * (1 + 1e-9), c) == pytest.approx(5 / 24, rel=1e-8)
    assert gaspari_cohn(0.5 * c, c) == pytest.approx(263 / 384, rel=1e-14)
    assert gaspari_cohn(1.5 * c, c) == pytest.approx(19 / 1152, rel=1e-12)
    beyond = np.array([2.0, 2.0 + 1e-12, 2.5, 7.0, 1e6]) * c
    assert np.all(gaspari_cohn(beyond, c) == 0.0)


@pytest.mark.parametrize("c", [0.4, 3.0, 10.0])
def test_gaspari_cohn_decreases_and_is_symmetric(c):
    d = np.linspace(0.0, 2 * c, 2001)
    f = gaspari_cohn(d, c)
    assert np.all(np.diff(f) < 0)  # strictly, up to the zero at 2c
    assert np.all((f >= 0) & (f <= 1))
    np.testing.assert_array_equal(gaspari_cohn(-d, c), f)


def test_gaspari_cohn_with_infinite_radius_is_one():
    d = np.array([0.0, 1.0, 17.0, 1e9])
    np.testing.assert_array_equal(gaspari_cohn(d, np.inf), np.ones(4))


def test_ring_distance_hand_cases():
    assert ring_distance(10, 0, 9) == 1
    assert ring_distance(10, 9, 0) == 1
    assert ring_distance(10, 2, 7) == 5
    assert ring_distance(10, 1, 8) == 3
    assert ring_distance(10, 4, 4) == 0
    i = np.arange(10)
    D = ring_distance(10, i[:, None], i)
    np.testing.assert_array_equal(D, D.T)
    np.testing.assert_array_equal(D[0], [0, 1, 2, 3, 4, 5, 4, 3, 2, 1])


def test_localization_matrix_hand_values():
    rho_xy, rho_yy = localization_matrix(40, L96_OIN, 4.0)
    assert rho_xy.shape == (40, 4) and rho_yy.shape == (4, 4)
    np.testing.assert_array_equal(rho_xy[L96_OIN, np.arange(4)], np.ones(4))
    np.testing.assert_array_equal(rho_yy, np.eye(4))  # 10 apart, support 8
    assert rho_xy[13, 0] == pytest.approx(5 / 24)  # distance 4 = c from 9
    assert rho_xy[1, 3] == pytest.approx(263 / 384)  # distance 2 from 39 round
    assert rho_xy[15, 0] == pytest.approx(19 / 1152)  # distance 6 = 1.5 c
    assert rho_xy[17, 0] == 0.0 and rho_xy[1, 0] == 0.0  # distance 8 = 2 c
    rho_ones = localization_matrix(40, L96_OIN, np.inf)
    np.testing.assert_array_equal(rho_ones[0], np.ones((40, 4)))
    np.testing.assert_array_equal(rho_ones[1], np.ones((4, 4)))


def test_localization_radius_above_quarter_ring_warns():
    with pytest.warns(UserWarning, match="ne/4"):
        localization_matrix(40, L96_OIN, 12.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for radius in [0.4, 10.0, np.inf]:
            localization_matrix(40, L96_OIN, radius)


@pytest.mark.parametrize("kind", ["stochastic", "denkf"])
def test_infinite_radius_equals_unlocalized_analysis(kind):
    rng = np.random.default_rng(20)
    E, y = rng.standard_normal((6, 2, 8)), rng.standard_normal((2, 2))
    oin, r = np.array([1, 4]), 0.3
    rho = localization_matrix(6, oin, np.inf)
    plain = ANALYSES[kind](E, y, oin, r, np.random.default_rng(21))
    tapered = ANALYSES[kind](E, y, oin, r, np.random.default_rng(21), rho)
    np.testing.assert_array_equal(tapered, plain)


@pytest.mark.parametrize("kind", ["stochastic", "denkf"])
def test_tiny_radius_changes_only_observed_variables(kind):
    rng = np.random.default_rng(22)
    E = 5.0 + 2.0 * rng.standard_normal((40, 3, 10))
    y = 5.0 + rng.standard_normal((4, 3))
    rho = localization_matrix(40, L96_OIN, 0.4)  # support 0.8 < 1 grid point
    Ea = ANALYSES[kind](E, y, L96_OIN, 0.1, rng, rho)
    unobserved = np.setdiff1d(np.arange(40), L96_OIN)
    np.testing.assert_array_equal(Ea[unobserved], E[unobserved])
    assert np.all(Ea[L96_OIN] != E[L96_OIN])


def test_tiny_radius_denkf_is_a_scalar_update_per_observed_variable():
    rng = np.random.default_rng(23)
    E = 5.0 + 2.0 * rng.standard_normal((40, 3, 10))
    y, r = 5.0 + rng.standard_normal((4, 3)), 0.1
    rho = localization_matrix(40, L96_OIN, 0.4)
    Ea = denkf_analysis(E, y, L96_OIN, r, rho=rho)
    for m, i in enumerate(L96_OIN):
        for b in range(3):
            x = E[i, b]
            k = x.var(ddof=1) / (x.var(ddof=1) + r)
            expected = x.mean() + k * (y[m, b] - x.mean())
            expected = expected + (1 - 0.5 * k) * (x - x.mean())
            np.testing.assert_allclose(Ea[i, b], expected, rtol=1e-12)


def test_tiny_radius_ekf_updates_each_observed_variable_alone():
    # With a taper of support < 1 grid point the analysis sees only the diagonal of
    # the forecast P: the unobserved variables keep their forecast values, and each
    # observed one gets a scalar Kalman update with its own forecast variance.
    x0, y = linear_problem(nbatch=2, seed=24)
    s, q, M = LINEAR, LINEAR_Q, M_LINEAR
    options = {"inflation": 1.0, "q": q, "localization": 0.4}
    xx = run_ekf(x0, y, LINEAR_OIN, s, model=linear_model(M), **options)
    step, _ = linear_model(M)
    for k in range(s.nf, s.nt + 1, s.nf):
        forecast = step(xx[..., k - 1])
        np.testing.assert_array_equal(xx[[1, 3], :, k], forecast[[1, 3]])
    for b in range(2):
        x, P = x0[:, b].copy(), s.var_init * np.eye(4)
        for k in range(1, s.nt + 1):
            x, P = M @ x, M @ P @ M.T + q * np.eye(4)
            if k % s.nf == 0:
                d = np.diag(P).copy()
                for m, i in enumerate(LINEAR_OIN):
                    gain = d[i] / (d[i] + s.var_obs)
                    x[i] += gain * (y[m, b, k // s.nf] - x[i])
                    d[i] *= 1 - gain
                P = np.diag(d)
            np.testing.assert_allclose(xx[:, b, k], x, rtol=1e-12, atol=1e-14)


def test_batched_localized_analyses_equal_one_at_a_time():
    rng = np.random.default_rng(25)
    oin, r = np.array([1, 4]), 0.3
    rho = localization_matrix(6, oin, 1.5)
    E, y = rng.standard_normal((6, 2, 3, 10)), rng.standard_normal((2, 2, 3))
    Ea = denkf_analysis(E, y, oin, r, rho=rho)
    for b in np.ndindex(2, 3):
        i = (slice(None),) + b
        one = denkf_analysis(E[i], y[i], oin, r, rho=rho)
        np.testing.assert_allclose(Ea[i], one, atol=1e-12)


def unlocalized_ensemble_run(kind, x0, y, oin, s, rng, members, inflation):
    """Ensemble means of a cycled EnKF written here, with the unlocalized analyses."""
    E = x0[..., None] + np.sqrt(s.var_init) * rng.standard_normal(x0.shape + (members,))
    means = [E.mean(-1)]
    for k in range(1, s.nt + 1):
        E = rk4(s.ne, s.dt, E, s.forcing)
        if k % s.nf == 0:
            Ea = ANALYSES[kind](E, y[..., k // s.nf], oin, s.var_obs, rng)
            E = inflate(Ea, inflation)
        means.append(E.mean(-1))
    return np.stack(means, -1)


def unlocalized_ekf_run(x0, y, oin, s, inflation, q):
    """Means of a cycled EKF written here, with the untapered analysis."""
    x, P = x0, np.broadcast_to(s.var_init * np.eye(s.ne), x0.shape[1:] + (s.ne,) * 2)
    means = [x]
    for k in range(1, s.nt + 1):
        M = rk4_jacobian(s.ne, s.dt, x, s.forcing)
        x = rk4(s.ne, s.dt, x, s.forcing)
        P = M @ P @ np.swapaxes(M, -1, -2) + q * np.eye(s.ne)
        if k % s.nf == 0:
            x, P = ekf_analysis(x, P, y[..., k // s.nf], oin, s.var_obs)
            P = inflation**2 * P
        means.append(x)
    return np.stack(means, -1)


@pytest.mark.parametrize("kind", ["stochastic", "denkf"])
def test_cycled_ensemble_without_localization_is_unlocalized_run(kind):
    s = Settings(tmax=0.5)
    _, x0, y = lorenz_problem(s, L96_OIN, nbatch=2, seed=26)
    options = {"members": 12, "inflation": 1.05, "q": 0.0}
    run = ENSEMBLE_RUNNERS[kind]
    xx = run(
        x0, y, L96_OIN, s, np.random.default_rng(27), localization=np.inf, **options
    )
    expected = unlocalized_ensemble_run(
        kind, x0, y, L96_OIN, s, np.random.default_rng(27), 12, 1.05
    )
    np.testing.assert_array_equal(xx, expected)


def test_cycled_ekf_without_localization_is_unlocalized_run():
    s = Settings(tmax=0.5)
    _, x0, y = lorenz_problem(s, L96_OIN, nbatch=2, seed=28)
    xx = run_ekf(x0, y, L96_OIN, s, inflation=0.9, q=1e-3, localization=np.inf)
    expected = unlocalized_ekf_run(x0, y, L96_OIN, s, 0.9, 1e-3)
    np.testing.assert_array_equal(xx, expected)


# %% Cycled filters on a linear Gaussian model


@pytest.mark.parametrize("inflation, q", [(1.0, 0.0), (1.0, LINEAR_Q), (1.1, LINEAR_Q)])
def test_ekf_on_linear_model_equals_kalman_filter(inflation, q):
    x0, y = linear_problem(nbatch=2)
    options = {"inflation": inflation, "q": q, "model": linear_model(M_LINEAR)}
    xx = run_ekf(x0, y, LINEAR_OIN, LINEAR, localization=np.inf, **options)
    for b in range(2):
        expected = kalman_filter(x0[:, b], y[:, b], q, inflation)
        np.testing.assert_allclose(xx[:, b], expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["stochastic", "denkf"])
def test_large_ensemble_on_linear_model_follows_kalman_filter(kind):
    x0, y = linear_problem(nbatch=2)
    N = 20000
    options = {"members": N, "inflation": 1.0, "q": LINEAR_Q, "localization": np.inf}
    rng = np.random.default_rng(8)
    run = ENSEMBLE_RUNNERS[kind]
    xx = run(x0, y, LINEAR_OIN, LINEAR, rng, model=linear_model(M_LINEAR), **options)
    # The ensemble mean differs from the filter by sampling error: a sample mean of
    # N draws is off by std / sqrt(N), and the filter's std stays below 1.02 here
    # (M has eigenvalues of modulus < 0.95, q is small). Errors of the sampled gain
    # add to this each cycle; over 10 seeds the largest error was 4.2 / sqrt(N), so
    # the test allows 8 / sqrt(N).
    tol = 8 / np.sqrt(N)
    for b in range(2):
        expected = kalman_filter(x0[:, b], y[:, b], LINEAR_Q, 1.0, kind == "denkf")
        assert np.abs(xx[:, b] - expected).max() < tol


# %% Lorenz-96 runs


@pytest.mark.parametrize("kind", ["stochastic", "denkf"])
def test_fully_observed_enkf_tracks_truth(kind):
    s = Settings(
        ne=40, dt=0.005, tmax=10.0, forcing=10.0, nf=10, var_obs=1e-2, var_init=1e-2
    )
    oin = np.arange(40)
    truth, x0, y = lorenz_problem(s, oin, nbatch=1, seed=9)
    run = ENSEMBLE_RUNNERS[kind]
    xx = run(
        x0, y, oin, s, np.random.default_rng(10), members=40, inflation=1.02, q=0.0
    )
    assert rmse_second_half(xx, truth)[0] < 0.05  # half the obs-noise std of 0.1


def short_lorenz(nbatch=2, tmax=1.0):
    """Settings, start states and an empty set of observations for a short run."""
    s = Settings(tmax=tmax)
    x0 = spin_up(s, np.random.default_rng(11), nbatch)
    return s, x0, np.zeros((0, nbatch, s.nb + 1)), np.array([], dtype=int)


def test_free_run_is_integrate():
    s, x0, y, oin = short_lorenz()
    np.testing.assert_array_equal(
        run_free(x0, y, oin, s), integrate(x0, s.nt, s.dt, s.forcing)
    )


@pytest.mark.parametrize(
    "run, options",
    [(run_ekf, {"inflation": 1.1, "q": 1e-3}), (run_nudging, {"gain": 0.7})],
)
def test_no_observations_gives_free_run(run, options):
    s, x0, y, oin = short_lorenz()
    xx = run(x0, y, oin, s, np.random.default_rng(12), **options)
    np.testing.assert_array_equal(xx, integrate(x0, s.nt, s.dt, s.forcing))


def test_zero_gain_nudging_is_free_run():
    s = Settings(tmax=1.0)
    oin = np.array([3, 13, 23, 33])
    _, x0, y = lorenz_problem(s, oin, nbatch=2, seed=13)
    xx = run_nudging(x0, y, oin, s, gain=0.0)
    np.testing.assert_array_equal(xx, integrate(x0, s.nt, s.dt, s.forcing))


@pytest.mark.parametrize("kind", ["stochastic", "denkf"])
def test_no_observations_gives_free_ensemble_mean(kind):
    # Without observations the ensemble filters make no analysis (no inflation
    # either), so with q = 0 they return the mean of the free ensemble, whose
    # members are x0 + N(0, var_init), the first draw from the generator.
    s, x0, y, oin = short_lorenz()
    N = 10
    E0 = x0[..., None] + np.sqrt(s.var_init) * np.random.default_rng(
        14
    ).standard_normal(x0.shape + (N,))
    expected = integrate(E0, s.nt, s.dt, s.forcing).mean(-2)
    run = ENSEMBLE_RUNNERS[kind]
    xx = run(x0, y, oin, s, np.random.default_rng(14), members=N, inflation=1.3, q=0.0)
    np.testing.assert_allclose(xx, expected, rtol=0, atol=1e-12)


def test_run_baselines_without_observations():
    s, x0, y, oin = short_lorenz()
    out = run_baselines(x0, y, oin, s, np.random.default_rng(15))
    assert list(out) == list(BASELINES)
    free = integrate(x0, s.nt, s.dt, s.forcing)
    for name in ["free run", "EKF", "nudging"]:
        np.testing.assert_array_equal(out[name], free)
    for name in ["EnKF", "DEnKF"]:
        assert out[name].shape == free.shape and np.all(np.isfinite(out[name]))


# %% Bad input


def bad_calls():
    """Calls that must raise a UserError, by name, each with a part of its message."""
    s, x0, y, oin = short_lorenz(nbatch=1, tmax=0.1)
    rng = np.random.default_rng(16)
    y1, o1 = np.zeros((1, 1, s.nb + 1)), np.array([3])
    return {
        "members": (lambda: run_enkf(x0, y, oin, s, rng, members=1), "at least 2"),
        "denkf members": (
            lambda: run_denkf(x0, y, oin, s, rng, members=0),
            "at least 2",
        ),
        "inflation": (lambda: run_enkf(x0, y, oin, s, rng, inflation=-1), "inflation"),
        "q": (lambda: run_enkf(x0, y, oin, s, rng, q=-1e-3), "q must not"),
        "kind": (lambda: run_enkf(x0, y, oin, s, rng, kind="etkf"), "kind must"),
        "ekf inflation": (lambda: run_ekf(x0, y, oin, s, inflation=-0.5), "inflation"),
        "ekf q": (lambda: run_ekf(x0, y, oin, s, q=-1.0), "q must not"),
        "radius 0": (
            lambda: run_enkf(x0, y, oin, s, rng, localization=0.0),
            "radius must be positive",
        ),
        "radius nan": (
            lambda: run_denkf(x0, y, oin, s, rng, localization=np.nan),
            "radius must be positive",
        ),
        "ekf radius": (
            lambda: run_ekf(x0, y, oin, s, localization=-2.0),
            "radius must be positive",
        ),
        "gain": (lambda: run_nudging(x0, y1, o1, s, gain=-0.1), "gain"),
        "y shape": (lambda: run_free(x0, y1[:, :, :-1], o1, s), "y must have shape"),
        "x0 shape": (lambda: run_free(x0[:-1], y, oin, s), "x0 must have shape"),
        "oin range": (lambda: run_nudging(x0, y1, np.array([40]), s), "indices"),
        "options": (lambda: run_baselines(x0, y, oin, s, rng, {"EnkF": {}}), "unknown"),
    }


@pytest.mark.parametrize("name", list(bad_calls()))
def test_bad_input_raises_user_error(name):
    call, message = bad_calls()[name]
    with pytest.raises(UserError, match=message):
        call()


def test_run_baselines_gives_nan_for_truths_that_blow_up():
    # x -> 2.5 x keeps the truth x0 = 0 at 0 and takes x0 = 1 past 1e8 in 30 steps.
    s = Settings(ne=4, dt=1.0, tmax=30.0, nf=2, var_obs=0.5, var_init=0.0)
    x0 = np.stack([np.zeros(4), np.ones(4)], 1)
    y, oin = np.zeros((0, 2, s.nb + 1)), np.array([], dtype=int)
    model = linear_model(2.5 * np.eye(4))
    off = {"localization": np.inf}  # the default radii exceed ne/4 = 1 and warn
    options = {"EnKF": off, "DEnKF": off, "EKF": off}
    with pytest.warns(UserWarning) as caught:
        out = run_baselines(x0, y, oin, s, np.random.default_rng(17), options, model)
    messages = [str(w.message) for w in caught]
    for name in BASELINES:
        assert np.all(np.isfinite(out[name][:, 0])), name
        assert np.all(np.isnan(out[name][:, 1])), name
        assert f"{name} blew up on 1 of 2 truths; their trajectories are NaN" in (
            messages
        ), name
    assert len(messages) == len(BASELINES)
