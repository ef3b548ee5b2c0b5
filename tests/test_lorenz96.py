"""Lorenz-96 tendency, RK4 step and trajectory integration."""

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from common import Settings, UserError, integrate, rhs, rk4, spin_up


def loop_rhs(u, forcing):
    """The tendency written element by element, straight from the equation."""
    ne = len(u)
    return np.array(
        [(u[(i + 1) % ne] - u[i - 2]) * u[i - 1] - u[i] + forcing for i in range(ne)]
    )


def test_rhs_hand_case():
    # (u[i+1] - u[i-2]) u[i-1] - u[i] + F for u = 1, 2, 3, 4 and F = 8, by hand:
    # i=0: (2-3)*4-1+8 = 3; i=1: (3-4)*1-2+8 = 5; i=2: (4-1)*2-3+8 = 11;
    # i=3: (1-2)*3-4+8 = 1
    u = np.array([1.0, 2.0, 3.0, 4.0])
    assert np.array_equal(rhs(4, u, 8.0), [3.0, 5.0, 11.0, 1.0])


@pytest.mark.parametrize("ne", [4, 5, 40])
def test_rhs_matches_loop_formula(ne):
    u = np.random.default_rng(ne).normal(size=ne)
    assert np.allclose(rhs(ne, u, 10.0), loop_rhs(u, 10.0), rtol=0, atol=1e-12)


def test_rest_state_is_a_fixed_point():
    u = np.full(40, 10.0)
    assert np.array_equal(rhs(40, u, 10.0), np.zeros(40))
    assert np.array_equal(rk4(40, 0.005, u, 10.0), u)


def test_rk4_is_fourth_order():
    rng = np.random.default_rng(1)
    u0 = 10.0 + rng.normal(size=40)
    T = 0.4
    exact = solve_ivp(
        lambda t, u: loop_rhs(u, 10.0),
        (0, T),
        u0,
        method="DOP853",
        rtol=1e-13,
        atol=1e-13,
    ).y[:, -1]
    errors = []
    for dt in (0.02, 0.01, 0.005):
        final = integrate(u0, round(T / dt), dt, 10.0)[:, -1]
        errors.append(np.max(np.abs(final - exact)))
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all((ratios > 13) & (ratios < 19)), ratios  # 2^4 = 16


def test_ensemble_equals_member_by_member():
    rng = np.random.default_rng(2)
    E = 8.0 + rng.normal(size=(40, 3, 5))
    together = integrate(E, 50, 0.005, 10.0)
    for m in np.ndindex(3, 5):
        alone = integrate(E[:, m[0], m[1]], 50, 0.005, 10.0)
        assert np.allclose(together[:, m[0], m[1]], alone, rtol=0, atol=1e-13)


@pytest.mark.parametrize("nsteps, every", [(5, 1), (64, 1), (65, 1), (200, 10)])
def test_integrate_keeps_every_nth_state(nsteps, every):
    u = 10.0 + np.random.default_rng(3).normal(size=(40, 2))
    states = [u]
    for _ in range(nsteps):
        states.append(rk4(40, 0.005, states[-1], 10.0))
    expected = np.stack(states, -1)[..., ::every]
    assert np.array_equal(integrate(u, nsteps, 0.005, 10.0, every), expected)
    single = integrate(u, nsteps, 0.005, 10.0, every, np.float32)
    assert single.dtype == np.float32
    assert np.allclose(single, expected, rtol=1e-6, atol=1e-5)


def test_spin_up_starts_from_perturbed_rest_state():
    s = Settings(ne=8, tini=0.005)
    u0 = np.full(8, s.forcing)
    u0[3] += 0.01  # x[ne/2 - 1] += 0.01
    assert np.array_equal(spin_up(s), rk4(8, s.dt, u0, s.forcing))


def test_blow_up_names_the_step():
    u = np.full(4, 10.0)
    u[0] = 1e3
    with pytest.raises(UserError, match=r"blew up at step \d+"):
        integrate(u, 50, 0.5, 10.0)
