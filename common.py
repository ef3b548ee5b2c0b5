"""Shared core of the Lorenz-96 BiLSTM-GRU nudging toolkit.

Symbols used in the data-assimilation code:

- ``ne``: number of state variables; ``u`` or ``x``: a state of shape (ne,) or a batch
  of states (ne, ...) with the state on axis 0 and members/truths on later axes.
- Trajectories carry time on the last axis: ``utrue`` (ne, nt+1), ``uwe`` (ne, npe, nt+1).
- ``nf``: time steps between observations; ``nb = nt // nf``: number of observation
  times after t=0; observation j is taken at step ``j * nf``.
- ``oin``: indices of the ``me`` observed variables (the observation operator H picks
  them); ``y``: observed values (me, ...); ``r``: observation-error variance.
- ``E``: ensemble (ne, ..., N) with members on the last axis; ``A``: its anomalies
  E - mean; ``P``: a covariance (ne, ne); ``K``: a gain (ne, me).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields

import numpy as np

# %% Shared settings: the one source of truth for the generator and all experiments

NE = 40  # number of Lorenz-96 variables
DT = 0.005  # RK4 time step
TMAX = 10.0  # length of the assimilation window (nt = TMAX / DT = 2000 steps)
TINI = 5.0  # spin-up time from the rest state x = F
FORCING = 10.0  # Lorenz-96 forcing F (truth, generator and experiments)
NF = 10  # steps between observations (nb = 200 observation times)
VAR_OBS = 1e-2  # observation-noise variance
VAR_INIT = 1e-2  # initial-condition error variance of priors and free runs
ME = 4  # number of observed variables used for assimilation
NPE = 400  # number of erroneous prior trajectories in the training ensemble
LOOKBACK = 1  # observation times in one network input sequence
SEED = 42  # seeds NumPy and Keras
DATA_FILE = "lstm_data_sparse.npz"


class UserError(Exception):
    """Bad input or an impossible run, reported as one line without a traceback."""


@dataclass(frozen=True)
class Settings:
    """Lorenz-96 and observation settings that a data file and a script must share."""

    ne: int = NE
    dt: float = DT
    tmax: float = TMAX
    tini: float = TINI
    forcing: float = FORCING
    nf: int = NF
    var_obs: float = VAR_OBS
    var_init: float = VAR_INIT

    @property
    def nt(self) -> int:
        return int(round(self.tmax / self.dt))

    @property
    def nb(self) -> int:
        return self.nt // self.nf

    def validate(self) -> Settings:
        if self.ne < 4:
            raise UserError(f"ne must be at least 4 for Lorenz-96, got {self.ne}")
        if not self.dt > 0:
            raise UserError(f"dt must be positive, got {self.dt}")
        if self.nt < 1:
            raise UserError(f"tmax={self.tmax} gives no time step with dt={self.dt}")
        if not 1 <= self.nf <= self.nt:
            raise UserError(f"nf must be in 1..nt={self.nt}, got {self.nf}")
        if self.var_obs < 0 or self.var_init < 0:
            raise UserError("noise variances must not be negative")
        return self


# %% Lorenz-96 model


def rhs(ne, u, forcing):
    """Lorenz-96 tendency (u[i+1] - u[i-2]) u[i-1] - u[i] + F, state on axis 0."""
    return (np.roll(u, -1, 0) - np.roll(u, 2, 0)) * np.roll(u, 1, 0) - u + forcing


def rk4(ne, dt, u, forcing):
    """One classical fourth-order Runge-Kutta step of the Lorenz-96 model."""
    k1 = rhs(ne, u, forcing)
    k2 = rhs(ne, u + 0.5 * dt * k1, forcing)
    k3 = rhs(ne, u + 0.5 * dt * k2, forcing)
    k4 = rhs(ne, u + dt * k3, forcing)
    return u + dt / 6.0 * (k1 + 2.0 * (k2 + k3) + k4)


def check_finite(u, step, dt):
    """Raise a UserError naming the step where the state stopped being finite."""
    if not np.all(np.abs(u) <= 1e8):
        raise UserError(f"the state blew up at step {step} (t={step * dt:.4g})")


def first_bad_step(traj, dt):
    """Raise a UserError at the first time index where a trajectory is not finite."""
    bad = ~(np.abs(traj) <= 1e8)
    if bad.any():
        step = int(np.argmax(bad.reshape(-1, traj.shape[-1]).any(0)))
        raise UserError(f"the state blew up at step {step} (t={step * dt:.4g})")


def integrate(u0, nsteps, dt, forcing):
    """Trajectory (*u0.shape, nsteps+1) of RK4 steps from u0; any batch shape."""
    u0 = np.asarray(u0, dtype=float)
    ne = u0.shape[0]
    out = np.empty(u0.shape + (nsteps + 1,))
    out[..., 0] = u = u0
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(1, nsteps + 1):
            u = rk4(ne, dt, u, forcing)
            out[..., k] = u
    first_bad_step(out, dt)
    return out


def spin_up(settings, rng=None, nbatch=None):
    """State after TINI of spin-up from x = F with x[ne/2-1] += 0.01.

    With ``rng`` and ``nbatch`` it returns (ne, nbatch) independent states whose
    starting perturbation also carries N(0, 0.01^2) noise on every variable.
    """
    s = settings
    shape = (s.ne,) if nbatch is None else (s.ne, nbatch)
    u = np.full(shape, s.forcing)
    u[s.ne // 2 - 1] += 0.01
    if rng is not None:
        u = u + 0.01 * rng.standard_normal(shape)
    nini = int(round(s.tini / s.dt))
    return integrate(u, nini, s.dt, s.forcing)[..., -1]


def observation_indices(ne, me):
    """Indices freq*i - 1, i = 1..me, freq = ne // me, of the observed variables."""
    if not 1 <= me <= ne:
        raise UserError(f"me (observed variables) must be in 1..ne={ne}, got {me}")
    freq = ne // me
    return np.array([freq * i - 1 for i in range(1, me + 1)])


def cycle(x0, nt, nf, step, analyse, record, dt=1.0):
    """Run a cycled forecast-analysis loop and return the recorded trajectory.

    ``step(x)`` advances the carried state by one time step, ``analyse(x, j)``
    corrects it with observation j at step j * nf (steps nf, 2 nf, ...), and
    ``record(x)`` returns the array to keep at each step, shape (ne, ...). The
    result has time on a new last axis (nt+1 entries).
    """
    x = x0
    first = record(x)
    out = np.empty(first.shape + (nt + 1,))
    out[..., 0] = first
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(1, nt + 1):
            x = step(x)
            if k % nf == 0:
                x = analyse(x, k // nf)
            out[..., k] = record(x)
            if k % nf == 0:
                check_finite(out[..., k], k, dt)
    check_finite(out[..., -1], nt, dt)
    return out


# %% Classical filters (baselines on the same truths and observations)

# Defaults from tune_baselines.py (ne=40, me=4, nf=10, 3 truths): the lowest
# second-half RMSE among settings that blew up on no truth. With 4 of 40 variables
# observed and no localization none of the filters tracks the truth (RMSE 1-6).
ENKF_MEMBERS = 40  # tried 20, 40; 20 blew up at every inflation below 1.2
ENKF_INFLATION = 1.1  # tried 1.0-1.2; below 1.1 it blew up on 1-2 of 3 truths
ENKF_Q = 0.0  # model-noise variance per step; tried 0, 1e-4
DENKF_MEMBERS = 40  # tried 20, 40
DENKF_INFLATION = 1.0  # tried 1.0-1.2; RMSE 1.2 at 1.0, 2.6 at 1.02, 4.3 at 1.05
DENKF_Q = 0.0  # tried 0, 1e-4
EKF_INFLATION = 0.9  # tried 0.9-1.1; at 0.95 and above it blew up on 2-3 of 3 truths
EKF_Q = 1e-3  # tried 0-1e-3; RMSE 3.6 at 1e-3, 5.3 at 1e-4 (free run: 6.2)
NUDGING_GAIN = 0.2  # tried 0-1; RMSE 5.6 at 0.2 against 6.2 for the free run


def rhs_jacobian(ne, u):
    """Analytic Jacobian of rhs at u (ne, *batch), shape (*batch, ne, ne); ne >= 4."""
    i = np.arange(ne)
    ub = np.moveaxis(u, 0, -1)  # (*batch, ne)
    J = np.zeros(ub.shape + (ne,))
    J[..., i, (i + 1) % ne] = ub[..., i - 1]
    J[..., i, i - 2] = -ub[..., i - 1]
    J[..., i, i - 1] = ub[..., (i + 1) % ne] - ub[..., i - 2]
    J[..., i, i] = -1.0
    return J


def rk4_jacobian(ne, dt, u, forcing):
    """Jacobian of one rk4 step at u (ne, *batch), shape (*batch, ne, ne).

    Chain rule through the stages: stage s has Jacobian D_s = J(u_s) (I + c_s dt
    D_{s-1}) with J the Jacobian of rhs at the stage state u_s.
    """
    u = np.asarray(u, dtype=float)
    eye = np.eye(ne)
    u2 = u + 0.5 * dt * rhs(ne, u, forcing)
    u3 = u + 0.5 * dt * rhs(ne, u2, forcing)
    u4 = u + dt * rhs(ne, u3, forcing)
    D1 = rhs_jacobian(ne, u)
    D2 = rhs_jacobian(ne, u2) @ (eye + 0.5 * dt * D1)
    D3 = rhs_jacobian(ne, u3) @ (eye + 0.5 * dt * D2)
    D4 = rhs_jacobian(ne, u4) @ (eye + dt * D3)
    return eye + dt / 6.0 * (D1 + 2.0 * (D2 + D3) + D4)


def lorenz96_model(settings):
    """The runners' default model pair (step, jacobian): rk4 and rk4_jacobian."""
    s = settings

    def step(u):
        return rk4(s.ne, s.dt, u, s.forcing)

    def jacobian(u):
        return rk4_jacobian(s.ne, s.dt, u, s.forcing)

    return step, jacobian


def inflate(E, factor):
    """Ensemble E (ne, ..., N) with its anomalies about the member mean times factor."""
    xbar = E.mean(-1, keepdims=True)
    return xbar + factor * (E - xbar)


def apply_gain(K, D):
    """K (*batch, ne, me) applied to D (me, *batch, N), giving (ne, *batch, N)."""
    return np.einsum("...ij,j...n->i...n", K, D)


def ensemble_gain(A, oin, r):
    """Kalman gain K (*batch, ne, me) from the anomalies A (ne, *batch, N)."""
    HA = A[oin]
    C = np.einsum("i...n,j...n->...ij", HA, HA)  # (N-1) H P H^T
    C = C + (A.shape[-1] - 1) * r * np.eye(len(oin))
    HPt = np.einsum("i...n,j...n->...ij", HA, A)  # (N-1) H P
    return np.swapaxes(np.linalg.solve(C, HPt), -1, -2)


def enkf_analysis(E, y, oin, r, rng):
    """Stochastic EnKF analysis of E (ne, *batch, N) with observations y (me, *batch).

    Each member sees y plus its own N(0, r) perturbation; the perturbations are
    centred over the members, so the analysis mean is xbar + K (y - H xbar) exactly.
    """
    N = E.shape[-1]
    K = ensemble_gain(E - E.mean(-1, keepdims=True), oin, r)
    eps = rng.standard_normal(np.shape(y) + (N,))
    eps = np.sqrt(r) * (eps - eps.mean(-1, keepdims=True))
    return E + apply_gain(K, np.asarray(y)[..., None] + eps - E[oin])


def denkf_analysis(E, y, oin, r, rng=None):
    """Deterministic EnKF (Sakov and Oke 2008) of E (ne, *batch, N) with y (me, *batch).

    The mean gets the full gain, the anomalies half of it: A_a = A - K H A / 2.
    """
    xbar = E.mean(-1, keepdims=True)
    A = E - xbar
    K = ensemble_gain(A, oin, r)
    d = np.asarray(y)[..., None] - xbar[oin]  # innovation of the mean
    return E + apply_gain(K, d - 0.5 * A[oin])


ENSEMBLE_ANALYSES = {"stochastic": enkf_analysis, "denkf": denkf_analysis}


def ekf_analysis(x, P, y, oin, r):
    """Kalman update of x (ne, *batch) and P (*batch, ne, ne) with y (me, *batch)."""
    HP = P[..., oin, :]  # (*batch, me, ne)
    S = HP[..., oin] + r * np.eye(len(oin))  # H P H^T + R
    K = np.swapaxes(np.linalg.solve(S, HP), -1, -2)  # P H^T S^-1, S symmetric
    xa = x + apply_gain(K, (np.asarray(y) - x[oin])[..., None])[..., 0]
    Pa = P - K @ HP
    return xa, 0.5 * (Pa + np.swapaxes(Pa, -1, -2))


def initial_ensemble(x0, members, var, rng):
    """Ensemble (ne, *batch, members): x0 (ne, *batch) plus N(0, var) on every entry."""
    x0 = np.asarray(x0, dtype=float)
    return x0[..., None] + np.sqrt(var) * rng.standard_normal(x0.shape + (members,))


def check_run_inputs(x0, y, oin, settings):
    """x0, y and oin as arrays, after checking their shapes against the settings."""
    s = settings.validate()
    x0 = np.asarray(x0, dtype=float)
    y = np.asarray(y, dtype=float)
    oin = np.asarray(oin, dtype=int).reshape(-1)
    if x0.ndim < 1 or x0.shape[0] != s.ne:
        raise UserError(f"x0 must have shape (ne={s.ne}, *batch), got {x0.shape}")
    if oin.size and (oin.min() < 0 or oin.max() >= s.ne):
        raise UserError(f"observed indices must be in 0..{s.ne - 1}, got {oin}")
    want = (oin.size, *x0.shape[1:], s.nb + 1)
    if y.shape != want:
        raise UserError(f"y must have shape (me, *batch, nb+1) = {want}, got {y.shape}")
    return x0, y, oin


def check_not_negative(**values):
    """Raise a UserError for the first keyword whose value is negative."""
    for name, value in values.items():
        if value < 0:
            raise UserError(f"{name} must not be negative, got {value}")


class FilterDiverged(UserError):
    """A cycled run whose state blew up: a result of the method, not bad input."""


def cycle_filter(x0, settings, forecast, analyse, record):
    """cycle() over the steps of settings, raising FilterDiverged on a blow-up."""
    s = settings
    try:
        return cycle(x0, s.nt, s.nf, forecast, analyse, record, s.dt)
    except UserError as error:
        raise FilterDiverged(str(error)) from error


def run_free(x0, y, oin, settings, rng=None, model=None):
    """Trajectory (ne, *batch, nt+1) of the model from x0 without assimilation."""
    x0, y, oin = check_run_inputs(x0, y, oin, settings)
    step, _ = model or lorenz96_model(settings)
    return cycle_filter(x0, settings, step, lambda x, j: x, lambda x: x)


def run_enkf(
    x0,
    y,
    oin,
    settings,
    rng,
    members=ENKF_MEMBERS,
    inflation=ENKF_INFLATION,
    q=ENKF_Q,
    kind="stochastic",
    model=None,
):
    """Ensemble-mean trajectory (ne, *batch, nt+1) of a cycled EnKF of the given kind.

    The first draw from rng is the initial ensemble x0 + N(0, var_init). Every time
    step adds N(0, q) noise to every member (none when q = 0), every analysis
    multiplies the analysis anomalies by inflation. With no observed variable no
    analysis is made, so the result is the mean of the free ensemble.
    """
    x0, y, oin = check_run_inputs(x0, y, oin, settings)
    if members < 2:
        raise UserError(
            f"npe/ensemble size must be at least 2 for the EnKF, got {members}"
        )
    check_not_negative(inflation=inflation, q=q)
    if kind not in ENSEMBLE_ANALYSES:
        raise UserError(f"kind must be one of {list(ENSEMBLE_ANALYSES)}, got {kind!r}")
    analysis = ENSEMBLE_ANALYSES[kind]
    step, _ = model or lorenz96_model(settings)
    s = settings

    def forecast(E):
        E = step(E)
        return E + np.sqrt(q) * rng.standard_normal(E.shape) if q > 0 else E

    def analyse(E, j):
        if oin.size == 0:
            return E
        return inflate(analysis(E, y[..., j], oin, s.var_obs, rng), inflation)

    E0 = initial_ensemble(x0, members, s.var_init, rng)
    return cycle_filter(E0, settings, forecast, analyse, lambda E: E.mean(-1))


def run_denkf(
    x0,
    y,
    oin,
    settings,
    rng,
    members=DENKF_MEMBERS,
    inflation=DENKF_INFLATION,
    q=DENKF_Q,
    model=None,
):
    """Ensemble-mean trajectory (ne, *batch, nt+1) of a cycled DEnKF; see run_enkf."""
    return run_enkf(x0, y, oin, settings, rng, members, inflation, q, "denkf", model)


def run_ekf(
    x0, y, oin, settings, rng=None, inflation=EKF_INFLATION, q=EKF_Q, model=None
):
    """Mean trajectory (ne, *batch, nt+1) of a cycled extended Kalman filter.

    P starts at var_init I and is propagated every step as M P M^T + q I with M the
    model Jacobian at the state before the step; each analysis covariance is
    multiplied by inflation**2 (inflation scales standard deviations). With no
    observed variable the mean is the free run exactly.
    """
    x0, y, oin = check_run_inputs(x0, y, oin, settings)
    check_not_negative(inflation=inflation, q=q)
    step, jacobian = model or lorenz96_model(settings)
    s = settings
    eye = np.eye(s.ne)
    P0 = np.broadcast_to(s.var_init * eye, x0.shape[1:] + eye.shape)

    def forecast(state):
        x, P = state
        M = jacobian(x)
        return step(x), M @ P @ np.swapaxes(M, -1, -2) + q * eye

    def analyse(state, j):
        if oin.size == 0:
            return state
        x, P = ekf_analysis(*state, y[..., j], oin, s.var_obs)
        return x, inflation**2 * P

    return cycle_filter((x0, P0), settings, forecast, analyse, lambda xP: xP[0])


def run_nudging(x0, y, oin, settings, rng=None, gain=NUDGING_GAIN, model=None):
    """Trajectory (ne, *batch, nt+1) nudged at each analysis step j nf.

    The observed variables move as x[oin] += gain (y_j - x[oin]): gain 0 is the
    free run, gain 1 direct insertion of the observations.
    """
    x0, y, oin = check_run_inputs(x0, y, oin, settings)
    check_not_negative(gain=gain)
    step, _ = model or lorenz96_model(settings)

    def analyse(x, j):
        x = x.copy()
        x[oin] += gain * (y[..., j] - x[oin])
        return x

    return cycle_filter(x0, settings, step, analyse, lambda x: x)


BASELINES = {
    "free run": run_free,
    "EnKF": run_enkf,
    "DEnKF": run_denkf,
    "EKF": run_ekf,
    "nudging": run_nudging,
}


def run_or_nan(run, x0, y, oin, settings, rng, **options):
    """run(), repeated truth by truth after a blow-up; NaN for truths that blow up."""
    x0, y = np.asarray(x0, dtype=float), np.asarray(y, dtype=float)
    try:
        return run(x0, y, oin, settings, rng, **options)
    except FilterDiverged:
        if x0.ndim == 1:
            return np.full(x0.shape + (settings.nt + 1,), np.nan)
        each = [
            run_or_nan(run, x0[:, b], y[:, b], oin, settings, rng, **options)
            for b in range(x0.shape[1])
        ]
        return np.stack(each, 1)


def run_baselines(x0, y, oin, settings, rng, options=None, model=None):
    """Mean trajectories (ne, *batch, nt+1) of every method in BASELINES, by name.

    options maps a method name to keyword arguments that replace its defaults. Each
    method draws from its own child of rng. A method that blows up is rerun truth by
    truth; the truths where it blows up get NaN trajectories and a warning.
    """
    import warnings

    options = options or {}
    unknown = sorted(set(options) - set(BASELINES))
    if unknown:
        raise UserError(f"unknown baseline(s) {unknown}; choose from {list(BASELINES)}")
    out = {}
    for (name, run), child in zip(BASELINES.items(), rng.spawn(len(BASELINES))):
        kw = {"model": model, **options.get(name, {})}
        out[name] = run_or_nan(run, x0, y, oin, settings, child, **kw)
        blown = np.isnan(out[name][..., -1]).any(0)
        if blown.any():
            warnings.warn(
                f"{name} blew up on {blown.sum()} of {blown.size} truths; "
                "their trajectories are NaN",
                stacklevel=2,
            )
    return out


def rmse_second_half(xx, xx_true):
    """Time mean over the second half of the RMSE over variables, one per truth."""
    half = xx.shape[-1] // 2
    err = xx[..., half:] - xx_true[..., half:]
    return np.sqrt((err**2).mean(0)).mean(-1)
