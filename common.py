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


def integrate(u0, nsteps, dt, forcing, every=1):
    """Trajectory (*u0.shape, nsteps // every + 1) of RK4 steps from u0.

    Works for any batch shape; with ``every > 1`` only every ``every``-th state is
    kept, which saves memory for large ensembles.
    """
    u0 = np.asarray(u0, dtype=float)
    ne = u0.shape[0]
    out = np.empty(u0.shape + (nsteps // every + 1,))
    out[..., 0] = u = u0
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(1, nsteps + 1):
            u = rk4(ne, dt, u, forcing)
            if k % every == 0:
                out[..., k // every] = u
    first_bad_step(out, dt * every)
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
