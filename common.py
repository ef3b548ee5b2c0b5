"""Shared core of the Lorenz-96 BiLSTM-GRU nudging toolkit.

Symbols used in the data-assimilation code:

- ``ne``: number of state variables; ``u`` or ``x``: a state of shape (ne,) or a batch
  of states (ne, ...) with the state on axis 0 and members/truths on later axes.
- Trajectories carry time on the last axis: ``utrue`` (ne, nt+1), ``uwe``
  (ne, npe, nt+1).
- ``nf``: time steps between observations; ``nb = nt // nf``: number of observation
  times after t=0; observation j is taken at step ``j * nf``.
- ``oin``: indices of the ``me`` observed variables (the observation operator H picks
  them); ``y``: observed values (me, ...); ``r``: observation-error variance.
- ``E``: ensemble (ne, ..., N) with members on the last axis; ``A``: its anomalies
  E - mean; ``P``: a covariance (..., ne, ne); ``K``: a gain (..., ne, me), with the
  batch axes first in the matrices; ``rho``: a localization taper.
- ``rho``: a localization taper multiplied entry by entry (Schur product) into a
  covariance; ``rho_xy`` (ne, me) for P H^T, ``rho_yy`` (me, me) for H P H^T.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass, fields

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up quiet
os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")  # same seed, same trained model

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


class Diverged(UserError):
    """A state that blew up during integration: a result of the run, not bad input."""


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

    def times(self):
        """Model times t (nt+1,) and observation times tobs (nb+1,)."""
        t = np.arange(self.nt + 1) * self.dt
        return t, t[:: self.nf][: self.nb + 1]

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
    up = np.concatenate([u[-2:], u, u[:1]])  # periodic: up[i + 2] = u[i]
    return (up[3:] - up[:-3]) * up[1:-2] - u + forcing


def rk4(ne, dt, u, forcing):
    """One classical fourth-order Runge-Kutta step of the Lorenz-96 model."""
    k1 = rhs(ne, u, forcing)
    k2 = rhs(ne, u + 0.5 * dt * k1, forcing)
    k3 = rhs(ne, u + 0.5 * dt * k2, forcing)
    k4 = rhs(ne, u + dt * k3, forcing)
    return u + dt / 6.0 * (k1 + 2.0 * (k2 + k3) + k4)


def first_bad_step(traj, dt, every=1, start=0):
    """Raise a UserError at the first time index where a trajectory is not finite.

    Time is on the last axis and traj[..., 0] is time index ``start``.
    """
    bad = ~(np.abs(traj) <= 1e8)
    if bad.any():
        index = start + int(np.argmax(bad.reshape(-1, traj.shape[-1]).any(0)))
        step = every * index
        raise Diverged(f"the state blew up at step {step} (t={step * dt:.4g})")


def integrate(u0, nsteps, dt, forcing, every=1, dtype=float):
    """Trajectory (*u0.shape, nsteps // every + 1) of RK4 steps from u0.

    Works for any batch shape; with ``every > 1`` only every ``every``-th state is
    kept, which saves memory for large ensembles, as does ``dtype=np.float32`` for the
    stored trajectory (the integration itself stays in float64). States are gathered
    in a small time-major block and copied out block by block, because writing one
    time column at a time into the time-last array is slower than the RK4 step. Each
    block is checked for blow-up before it is copied, so that no temporary as large
    as the trajectory is made.
    """
    u = np.asarray(u0, dtype=float)
    ne, nkeep = u.shape[0], nsteps // every + 1
    out = np.empty(u.shape + (nkeep,), dtype=dtype)
    block = np.empty((min(64, nkeep),) + u.shape)
    block[0], filled, start = u, 1, 0
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(1, nsteps + 1):
            u = rk4(ne, dt, u, forcing)
            if k % every:
                continue
            if filled == len(block):
                _store(out, block, start, dt, every)
                start, filled = start + filled, 0
            block[filled], filled = u, filled + 1
    _store(out, block[:filled], start, dt, every)
    return out


def _store(out, block, start, dt, every):
    """Check a time-major block of states, then copy it into out[..., start:]."""
    states = np.moveaxis(block, 0, -1)
    first_bad_step(states, dt, every, start)
    out[..., start : start + len(block)] = states


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


def cycle(x0, settings, step, analyse, record):
    """Run a cycled forecast-analysis loop over the steps of ``settings``.

    ``step(x)`` advances the carried state by one time step, ``analyse(x, j)``
    corrects it with observation j at step j * nf (steps nf, 2 nf, ...), and
    ``record(x)`` returns the array to keep at each step, shape (ne, ...). The
    result has time on a new last axis (nt+1 entries); a blow-up is looked for at
    every analysis and at the last step.
    """
    s, x = settings, x0
    first = record(x)
    out = np.empty(first.shape + (s.nt + 1,))
    out[..., 0] = first
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(1, s.nt + 1):
            x = step(x)
            analysed = k % s.nf == 0
            if analysed:
                x = analyse(x, k // s.nf)
            out[..., k] = record(x)
            if analysed or k == s.nt:
                first_bad_step(out[..., k : k + 1], s.dt, start=k)
    return out


# %% Command line, configuration echo and error reporting


def _option_type(value):
    """The argparse (type, nargs) that parses a hyperparameter's default value."""
    if isinstance(value, (tuple, list)):
        return type(value[0]) if value else int, "+"
    return type(value), None


def parse_config(script_globals, argv=None):
    """Read the script's UPPER_CASE hyperparameters, with shell overrides applied.

    Every UPPER_CASE int, float, str, bool or tuple in ``script_globals`` becomes an
    option (``EPOCHS`` -> ``--epochs``), as do the shared settings of ``Settings``,
    ``--data`` and ``--out``. Returns an ``argparse.Namespace`` with lowercase names
    and a ``settings`` attribute.
    """
    script = os.path.splitext(os.path.basename(script_globals["__file__"]))[0]
    parser = argparse.ArgumentParser(
        prog=f"{script}.py",
        description=(script_globals.get("__doc__") or "").split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    comments = _trailing_comments(script_globals["__file__"])
    options = {f.name.upper(): f.default for f in fields(Settings)}
    options.update(
        (name, value)
        for name, value in script_globals.items()
        if name.isupper() and isinstance(value, (int, float, str, tuple, list))
    )
    for name, value in options.items():
        flag = "--" + name.lower().replace("_", "-")
        text = comments.get(name, "")
        if name.lower() in CHOICES:
            text += f" (one of: {', '.join(CHOICES[name.lower()])})"
        if isinstance(value, bool):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=value, help=text
            )
            continue
        kind, nargs = _option_type(value)
        parser.add_argument(
            flag, type=kind, nargs=nargs, default=value, metavar=name, help=text
        )
    parser.add_argument(
        "--data", default=script_globals.get("DATA", DATA_FILE), help="data file"
    )
    parser.add_argument(
        "--out", default=os.path.join("results", script), help="results folder"
    )
    parser.add_argument(
        "--quiet", action="store_true", help="hide Keras's line per training epoch"
    )
    config = parser.parse_args(argv)
    _check_choices(config)
    config.script = script
    config.settings = Settings(
        **{f.name: getattr(config, f.name) for f in fields(Settings)}
    ).validate()
    return config


CHOICES = {
    "training": ("same-trajectory", "many-truths"),
    "trainings": ("same-trajectory", "many-truths"),
    "loss": ("huber_loss", "keras_huber"),
    "dtype": ("float32", "float64"),
    "uwe_dtype": ("float32", "float64"),
}


METRICS = ("mae", "mse", "mape", "root_mean_squared_error")


def _check_choices(config):
    """Raise a UserError for a hyperparameter outside its allowed values."""
    for name, allowed in CHOICES.items():
        values = getattr(config, name, allowed[0])
        for value in values if isinstance(values, (list, tuple)) else [values]:
            if value not in allowed:
                raise UserError(f"{name} must be one of {allowed}, got '{value}'")
    for name in ("epochs", "batch_size", "lookback", "train_truths", "npe"):
        if getattr(config, name, 1) < 1:
            raise UserError(f"{name} must be at least 1, got {getattr(config, name)}")
    for name in ("n_test", "patience"):
        if getattr(config, name, 0) < 0:
            raise UserError(f"{name} must not be negative, got {getattr(config, name)}")
    if getattr(config, "seed", 0) < 0:
        raise UserError(f"seed must not be negative, got {config.seed}")
    units = getattr(config, "units", (1, 1, 1))
    if len(units) != 3 or min(units) < 1:
        raise UserError(f"units must be three positive widths, got {list(units)}")
    metric = getattr(config, "metric", "mae")
    if metric not in METRICS:
        raise UserError(f"metric must be one of {METRICS}, got '{metric}'")
    folder = os.path.dirname(os.path.abspath(getattr(config, "data", ".")))
    if not os.path.isdir(folder):
        raise UserError(f"the folder of the data file, {folder}, does not exist")
    spread = getattr(config, "prior_spread", (1, 1))
    if len(spread) != 2 or not 0 < spread[0] <= spread[1]:
        raise UserError(
            f"prior_spread must be two numbers 0 < low <= high, got {spread}"
        )


def _trailing_comments(path):
    """NAME -> its trailing comment, for the UPPER_CASE assignments of a file."""
    comments = {}
    for source in (path, __file__):
        with open(source) as stream:
            for line in stream:
                name, _, rest = line.partition(" = ")
                if name.isupper() and name.isidentifier() and "  # " in rest:
                    comments.setdefault(name, rest.split("  # ", 1)[1].strip())
    return comments


def echo_config(config):
    """Print the configuration on one line."""
    shown = {k: v for k, v in vars(config).items() if k not in ("settings", "script")}
    print(f"{config.script}: " + " ".join(f"{k}={v}" for k, v in shown.items()))


def config_dict(config):
    """The configuration as JSON-ready values."""
    out = {k: v for k, v in vars(config).items() if k != "settings"}
    out.update(asdict(config.settings), nt=config.settings.nt, nb=config.settings.nb)
    return json.loads(json.dumps(out, default=list))


def run_cli(main):
    """Run ``main()``; report a UserError as one line on stderr and exit with 2."""
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


# %% Files: settings record, data loading and whole-or-nothing output


def settings_record(settings, **extra):
    """Plain numeric arrays that record how a data file was generated."""
    record = {f"setting_{k}": np.asarray(v) for k, v in asdict(settings).items()}
    record.update({f"setting_{k}": np.asarray(v) for k, v in extra.items()})
    return record


def _umask():
    umask = os.umask(0)
    os.umask(umask)
    return umask


def save_npz(path, **arrays):
    """Write an .npz file whole: write to a temporary name, then rename."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, tmp = tempfile.mkstemp(suffix=".npz", dir=folder)
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, **arrays)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_data(path, settings):
    """Load and validate the generator's file against the script's settings."""
    generator = "python lorenz96_bilstm_gru_sparse.py"
    if os.path.isdir(path):
        raise UserError(f"--data {path} is a folder, not a data file")
    if not os.path.isfile(path):
        raise UserError(f"data file {path} not found; run `{generator}` first")
    try:
        with np.load(path, allow_pickle=False) as archive:
            data = {key: archive[key] for key in archive.files}
    except Exception as error:
        reason = "not an .npz archive" if "pickle" in str(error) else str(error)
        raise UserError(f"cannot read data file {path}: {reason}") from None
    if not isinstance(data, dict):
        raise UserError(f"cannot read data file {path}: not an .npz archive")
    for key in ("utrue", "uobs", "uwe"):
        if key not in data:
            raise UserError(f"data file {path} has no '{key}'; run `{generator}`")
        if not np.issubdtype(data[key].dtype, np.number):
            raise UserError(f"data file {path}: '{key}' does not hold numbers")
        if not np.all(np.isfinite(data[key])):
            raise UserError(f"data file {path}: '{key}' holds NaN or infinite values")
    _check_recorded_settings(path, data, settings)
    _check_shapes(path, data, settings)
    return data


def _check_recorded_settings(path, data, settings):
    for name, value in asdict(settings).items():
        key = f"setting_{name}"
        if key in data and not np.isclose(float(data[key]), float(value)):
            raise UserError(
                f"{path} was generated with {name}={data[key].item():g} but this "
                f"run uses {name}={value:g}; regenerate the data or pass "
                f"--{name.replace('_', '-')} {data[key].item():g}"
            )


def _check_shapes(path, data, settings):
    ne, nt, nb = settings.ne, settings.nt, settings.nb
    every = int(data.get("setting_uwe_every", 1))
    uwe_steps = nt // every + 1
    expected = {"utrue": (ne, nt + 1), "uobs": (ne, nb + 1)}
    for key, shape in expected.items():
        if data[key].shape != shape:
            raise UserError(
                f"{path}: '{key}' has shape {data[key].shape}, expected {shape}"
            )
    uwe = data["uwe"]
    if uwe.ndim != 3 or uwe.shape[0] != ne or uwe.shape[2] != uwe_steps:
        raise UserError(
            f"{path}: 'uwe' has shape {uwe.shape}, expected ({ne}, npe, {uwe_steps})"
        )


class staged_output:
    """Context manager: write results into a staging folder, rename it on success.

    On an error the staging folder is removed and an earlier result stays as it was.
    """

    def __init__(self, folder):
        self.folder = os.path.abspath(folder)

    def __enter__(self):
        parent = os.path.dirname(self.folder)
        os.makedirs(parent, exist_ok=True)
        name = os.path.basename(self.folder)
        self.staging = tempfile.mkdtemp(prefix=f".{name}.partial-", dir=parent)
        os.chmod(self.staging, 0o777 & ~_umask())
        return self.staging

    def __exit__(self, kind, value, traceback):
        if kind is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            return False
        old = None
        if os.path.exists(self.folder):
            old = tempfile.mkdtemp(prefix=".old-", dir=os.path.dirname(self.folder))
            os.replace(self.folder, os.path.join(old, "previous"))
        os.replace(self.staging, self.folder)
        if old:
            shutil.rmtree(old, ignore_errors=True)
        return False


# %% Truths, observations and free runs


def observe(utrue, settings, rng):
    """All variables at steps 0, nf, 2 nf, ... plus N(0, var_obs) noise."""
    truth = utrue[..., :: settings.nf][..., : settings.nb + 1]
    return truth + np.sqrt(settings.var_obs) * rng.standard_normal(truth.shape)


def perturb(u, variance, rng):
    """u plus independent N(0, variance) noise."""
    return u + np.sqrt(variance) * rng.standard_normal(np.shape(u))


def make_truths(settings, ntruth, rng):
    """Independent truths with their observations and perturbed starts.

    Returns utrue (ne, n, nt+1), uobs (ne, n, nb+1) and x0 (ne, n), where x0 is the
    true state at t=0 plus N(0, var_init) noise (the start of every run).
    """
    s = settings
    u0 = spin_up(s, rng, ntruth)
    utrue = integrate(u0, s.nt, s.dt, s.forcing)
    uobs = observe(utrue, s, rng)
    return utrue, uobs, perturb(u0, s.var_init, rng)


# %% Training data


def create_training_data_lstm(features, labels, lookback):
    """Sliding windows of ``lookback`` consecutive times for a recurrent network.

    features (..., m, nfeat) and labels (..., m, nlab) are time series along axis
    -2 (leading axes are independent series, e.g. ensemble members; windows never
    cross them). Returns X (n, lookback, nfeat) and y (n, nlab) with y[i] the label
    at the last time of window X[i].
    """
    m = features.shape[-2]
    if not 1 <= lookback <= m:
        raise UserError(f"lookback must be in 1..{m}, got {lookback}")
    windows = np.lib.stride_tricks.sliding_window_view(features, lookback, axis=-2)
    X = np.moveaxis(windows, -1, -2).reshape(-1, lookback, features.shape[-1])
    y = labels[..., lookback - 1 :, :].reshape(-1, labels.shape[-1])
    return np.ascontiguousarray(X), y


def features_and_labels(prior, truth, y):
    """Network features (prior, observed values) and labels truth - prior.

    prior and truth (ne, M, nb+1), y (me, M, nb+1) -> features (M, nb+1, ne+me),
    labels (M, nb+1, ne).
    """
    features = np.concatenate([prior, y], axis=0)
    labels = truth - prior
    return np.moveaxis(features, 0, -1), np.moveaxis(labels, 0, -1)


def same_trajectory_pairs(data, oin, settings):
    """Training pairs of the published method: every prior against the one truth."""
    every = int(data.get("setting_uwe_every", 1))
    if settings.nf % every:
        raise UserError(f"uwe keeps every {every}-th step, which does not divide nf")
    prior = data["uwe"][..., :: settings.nf // every].astype(float)
    truth = np.broadcast_to(data["utrue"][:, None, :: settings.nf], prior.shape)
    y = np.broadcast_to(data["uobs"][oin, None, :], (len(oin),) + prior.shape[1:])
    return features_and_labels(prior, truth, y)


def many_truth_pairs(settings, oin, ntruth, spread, rng):
    """Training pairs from many independent truths with cycled-like priors.

    Each prior is an nf-step forecast from the truth one observation time earlier
    plus N(0, s^2) noise, with s drawn log-uniformly from ``spread`` (low, high), so
    that the network sees the small errors met during cycled assimilation.
    """
    s = settings
    u0 = spin_up(s, rng, ntruth)
    truth = integrate(u0, s.nt, s.dt, s.forcing, every=s.nf)[..., : s.nb + 1]
    sigma = np.exp(rng.uniform(*np.log(spread), size=(1, ntruth, s.nb)))
    start = truth[..., :-1] + sigma * rng.standard_normal(truth[..., :-1].shape)
    forecast = integrate(start, s.nf, s.dt, s.forcing)[..., -1]
    prior = np.concatenate([perturb(truth[..., :1], s.var_init, rng), forecast], -1)
    y = perturb(truth[oin], s.var_obs, rng)
    return features_and_labels(prior, truth, y)


def scale_training_set(X, y):
    """MinMaxScaler(-1, 1) on inputs and outputs; returns scaled arrays and scalers."""
    from sklearn.preprocessing import MinMaxScaler

    scaler_x = MinMaxScaler(feature_range=(-1, 1))
    scaler_y = MinMaxScaler(feature_range=(-1, 1))
    Xs = scaler_x.fit_transform(X.reshape(-1, X.shape[-1])).reshape(X.shape)
    ys = scaler_y.fit_transform(y)
    return Xs, ys, scaler_x, scaler_y


# %% Network: loss, model, training


def huber_loss(y_true, y_pred, delta=1.0):
    """Huber loss: 0.5 e^2 for |e| <= delta, delta (|e| - delta/2) beyond."""
    import keras

    error = keras.ops.abs(y_true - y_pred)
    quadratic = keras.ops.minimum(error, delta)
    linear = error - quadratic
    return keras.ops.mean(0.5 * quadratic**2 + delta * linear, axis=-1)


def build_model(nfeatures, nout, lookback, units, loss, metric, dtype="float32"):
    """Input -> BiLSTM(relu) -> GRU(relu) -> Dense(relu) -> Dense(nout), compiled."""
    import keras

    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((lookback, nfeatures), dtype=dtype),
            layers.Bidirectional(
                layers.LSTM(
                    units[0], activation="relu", return_sequences=True, dtype=dtype
                ),
                dtype=dtype,
            ),
            layers.GRU(units[1], activation="relu", dtype=dtype),
            layers.Dense(units[2], activation="relu", dtype=dtype),
            layers.Dense(nout, dtype=dtype),
        ]
    )
    losses = {"huber_loss": huber_loss, "keras_huber": keras.losses.Huber()}
    if loss not in losses:
        raise UserError(f"loss must be one of {sorted(losses)}, got {loss}")
    model.compile(
        optimizer=keras.optimizers.Adam(), loss=losses[loss], metrics=[metric]
    )
    return model


def load_model(path):
    """Reload a model saved as legacy HDF5 (no compile: it is used for prediction)."""
    import keras

    return keras.models.load_model(
        path, custom_objects={"huber_loss": huber_loss}, compile=False
    )


def train(model, X, y, out, epochs, batch_size, patience, seed, verbose=2):
    """Fit on a shuffled 80/20 split; keep and reload the best model from its .h5.

    Writes ``training.log`` and ``model_bilstm_gru.h5`` into ``out``; returns the
    reloaded best model and the per-epoch history.
    """
    import keras
    from sklearn.model_selection import train_test_split

    Xt, Xv, yt, yv = train_test_split(
        X, y, test_size=0.2, shuffle=True, random_state=seed
    )
    path = os.path.join(out, "model_bilstm_gru.h5")
    callbacks = [
        keras.callbacks.CSVLogger(os.path.join(out, "training.log")),
        keras.callbacks.ModelCheckpoint(path, monitor="val_loss", save_best_only=True),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience),
    ]
    history = model.fit(
        Xt,
        yt,
        validation_data=(Xv, yv),
        epochs=epochs,
        batch_size=batch_size,
        callbacks=callbacks,
        verbose=verbose,
    )
    return load_model(path), history.history


# %% Fast NumPy evaluation of the trained network


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


ACTIVATIONS = {
    "relu": lambda z: np.maximum(z, 0.0),
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "linear": lambda z: z,
}


def _activation(layer, name="activation"):
    function = getattr(layer, name)
    key = getattr(function, "__name__", str(function))
    if key not in ACTIVATIONS:
        raise UserError(f"no NumPy version of activation '{key}'")
    return ACTIVATIONS[key]


def _lstm(layer):
    W, U, b = (np.asarray(w, dtype=float) for w in layer.get_weights())
    act, gate = _activation(layer), _activation(layer, "recurrent_activation")

    def forward(x):  # x (B, L, nin) -> (B, L, units)
        u = U.shape[0]
        h = c = np.zeros((x.shape[0], u))
        xw = x @ W + b
        out = []
        for t in range(x.shape[1]):
            z = xw[:, t] + h @ U
            i, f, o = gate(z[:, :u]), gate(z[:, u : 2 * u]), gate(z[:, 3 * u :])
            c = f * c + i * act(z[:, 2 * u : 3 * u])
            h = o * act(c)
            out.append(h)
        return np.stack(out, axis=1)

    return forward


def _gru(layer):
    W, U, b = (np.asarray(w, dtype=float) for w in layer.get_weights())
    act, gate = _activation(layer), _activation(layer, "recurrent_activation")
    if not layer.reset_after:
        raise UserError("the NumPy GRU supports reset_after=True only")

    def forward(x):
        u = U.shape[0]
        h = np.zeros((x.shape[0], u))
        xw = x @ W + b[0]
        out = []
        for t in range(x.shape[1]):
            hu = h @ U + b[1]
            z = gate(xw[:, t, :u] + hu[:, :u])
            r = gate(xw[:, t, u : 2 * u] + hu[:, u : 2 * u])
            h = z * h + (1.0 - z) * act(xw[:, t, 2 * u :] + r * hu[:, 2 * u :])
            out.append(h)
        return np.stack(out, axis=1)

    return forward


def _recurrent(layer):
    forward = {"LSTM": _lstm, "GRU": _gru}[type(layer).__name__](layer)
    if layer.return_sequences:
        return forward
    return lambda x: forward(x)[:, -1]


def _bidirectional(layer):
    ahead, back = _recurrent(layer.forward_layer), _recurrent(layer.backward_layer)
    if layer.merge_mode != "concat":
        raise UserError("the NumPy Bidirectional supports merge_mode='concat' only")

    def forward(x):
        backward = back(x[:, ::-1])
        if backward.ndim == 3:
            backward = backward[:, ::-1]
        return np.concatenate([ahead(x), backward], axis=-1)

    return forward


def _dense(layer):
    W, b = (np.asarray(w, dtype=float) for w in layer.get_weights())
    act = _activation(layer)
    return lambda x: act(x @ W + b)


NUMPY_LAYERS = {
    "Bidirectional": _bidirectional,
    "LSTM": _recurrent,
    "GRU": _recurrent,
    "Dense": _dense,
}


def numpy_network(model):
    """The forward pass of a Sequential BiLSTM/GRU/Dense model, in float64 NumPy."""
    steps = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind not in NUMPY_LAYERS:
            raise UserError(f"no NumPy version of layer type {kind}")
        steps.append(NUMPY_LAYERS[kind](layer))

    def forward(x):
        for step in steps:
            x = step(x)
        return x

    return forward


class Corrector:
    """Scaled network prediction: window of (prior, observed values) -> correction.

    ``scaling`` holds the MinMaxScaler factors: x_scale, x_min, y_scale, y_min.
    """

    def __init__(self, model, scaling):
        self.network = numpy_network(model)
        self.scaling = {key: np.asarray(value) for key, value in scaling.items()}

    @classmethod
    def load(cls, folder):
        """The corrector saved in ``folder`` (model_bilstm_gru.h5, scaling.npz)."""
        with np.load(os.path.join(folder, "scaling.npz")) as scaling:
            return cls(load_model(os.path.join(folder, "model_bilstm_gru.h5")), scaling)

    def __call__(self, window):
        """window (B, lookback, ne+me) in physical units -> correction (B, ne)."""
        c = self.scaling
        scaled = self.network(window * c["x_scale"] + c["x_min"])
        return (scaled - c["y_min"]) / c["y_scale"]


def scaling_factors(scaler_x, scaler_y):
    """The factors of two fitted MinMaxScalers, as plain arrays."""
    return dict(
        x_scale=scaler_x.scale_,
        x_min=scaler_x.min_,
        y_scale=scaler_y.scale_,
        y_min=scaler_y.min_,
    )


# %% Nudging with the network's correction


def assimilate_network(corrector, x0, y, settings, lookback, scheme="feedback"):
    """Forecast with RK4 and add the predicted correction at every observation time.

    x0 (ne, B) start states, y (me, B, nb+1) observed values. ``scheme="feedback"``
    forecasts from each corrected state; ``scheme="copy"`` keeps forecasting the
    uncorrected state and adds the correction to a copy at observation times only.
    Returns (ne, B, nt+1).
    """
    s = settings
    history = [np.concatenate([x0, y[..., 0]]).T] * lookback

    def correction(x, j):
        history.append(np.concatenate([x, y[..., j]]).T)
        window = np.stack(history[-lookback:], axis=1)
        return corrector(window).T

    def step(state):
        x = rk4(s.ne, s.dt, state[0], s.forcing)
        return x, x

    def analyse(state, j):
        x, _ = state
        corrected = x + correction(x, j)
        return (corrected, corrected) if scheme == "feedback" else (x, corrected)

    if scheme not in ("feedback", "copy"):
        raise UserError(f"scheme must be 'feedback' or 'copy', got {scheme}")
    return cycle((x0, x0), s, step, analyse, lambda st: st[1])


# %% Metrics


def metrics(truth, estimate, axis=None):
    """MAE, MSE, RMSE and global R^2 = 1 - SSres/SStot over ``axis`` (all values)."""
    error = estimate - truth
    mse = np.mean(error**2, axis=axis)
    anomaly = truth - np.mean(truth, axis=axis, keepdims=True)
    r2 = 1.0 - np.sum(error**2, axis=axis) / np.sum(anomaly**2, axis=axis)
    return {
        "MAE": np.mean(np.abs(error), axis=axis),
        "MSE": mse,
        "RMSE": np.sqrt(mse),
        "R2": r2,
    }


def rmse_over_time(truth, estimate):
    """RMSE across the state variables (axis 0) at every time."""
    return np.sqrt(np.mean((estimate - truth) ** 2, axis=0))


def evaluation_rows(utrue, runs, labels):
    """Metrics per (method, evaluation set), mean and std across that set's truths.

    utrue and every run are (ne, B, nt+1); ``labels`` (B,) names the evaluation set
    of each truth. RMSE is also given over the second half of the window. A run that
    blew up on a truth (NaN trajectory) is counted in "blew up" and left out of the
    mean and std.
    """
    half = utrue.shape[-1] // 2
    rows = []
    for method, run in runs.items():
        per_truth = metrics(utrue, run, axis=(0, 2))
        second = metrics(utrue[..., half:], run[..., half:], axis=(0, 2))
        per_truth["RMSE 2nd half"] = second["RMSE"]
        finite = np.isfinite(per_truth["RMSE"])
        for label in dict.fromkeys(labels):
            pick = np.asarray(labels) == label
            kept = pick & finite
            row = {
                "method": method,
                "evaluation": label,
                "truths": int(pick.sum()),
                "blew up": int((pick & ~finite).sum()),
            }
            for name, values in per_truth.items():
                row[name] = float(np.mean(values[kept])) if kept.any() else np.nan
                row[name + " std"] = (
                    float(np.std(values[kept], ddof=1)) if kept.sum() > 1 else np.nan
                )
            rows.append(row)
    return rows


def print_table(rows, title=""):
    """A plain-text table: RMSE (± std across truths), second-half RMSE, MAE, R^2."""

    def cell(row, name):
        spread = row[name + " std"]
        return f"{row[name]:.3f}" + ("" if np.isnan(spread) else f" ± {spread:.3f}")

    def note(row):
        blown = row["blew up"]
        return f"  (blew up on {blown} of {row['truths']})" if blown else ""

    lead = "me" in rows[0]
    print(f"\n{title}")
    print(
        ("me  " if lead else "")
        + f"{'method':<28}{'evaluation':<16}{'RMSE':>17}{'RMSE 2nd half':>17}"
        f"{'MAE':>17}{'R2':>17}"
    )
    for row in rows:
        cells = "".join(
            f"{cell(row, name):>17}" for name in ("RMSE", "RMSE 2nd half", "MAE", "R2")
        )
        me = f"{row['me']:<4}" if lead else ""
        print(f"{me}{row['method']:<28}{row['evaluation']:<16}{cells}{note(row)}")


# %% Experiment steps shared by the scripts


def start(script_globals, argv=None):
    """Parse and echo the configuration, load the data, seed; the common first step.

    Returns the configuration, the validated data, the observed indices and the
    training Generator.
    """
    config = parse_config(script_globals, argv)
    echo_config(config)
    ne = config.settings.ne
    oin = observation_indices(ne, config.me) if hasattr(config, "me") else None
    for me in getattr(config, "me_list", ()):
        observation_indices(ne, me)
    data = load_data(config.data, config.settings)
    return config, data, oin, seed_everything(config.seed)


def seed_everything(seed):
    """Seed Keras (and its backend) and return a NumPy Generator with the same seed."""
    import keras

    keras.utils.set_random_seed(seed)
    return np.random.default_rng(seed)


def training_set(config, data, oin, rng):
    """Windows, labels and scalers for the chosen training mode, scaled to [-1, 1]."""
    s = config.settings
    if config.training == "same-trajectory":
        features, labels = same_trajectory_pairs(data, oin, s)
    elif config.training == "many-truths":
        spread = tuple(config.prior_spread)
        features, labels = many_truth_pairs(s, oin, config.train_truths, spread, rng)
    else:
        raise UserError(f"training must be one of {CHOICES['training']}")
    X, y = create_training_data_lstm(features, labels, config.lookback)
    Xs, ys, scaler_x, scaler_y = scale_training_set(X, y)
    print(f"training set ({config.training}): X {Xs.shape}, y {ys.shape}")
    return Xs.astype(config.dtype), ys.astype(config.dtype), (scaler_x, scaler_y)


def fit_corrector(config, data, oin, rng, out):
    """Build the training set, train the network and wrap the best model.

    Writes ``model_bilstm_gru.h5``, ``training.log`` and ``scaling.npz`` (the
    input and output scaling) into ``out``; returns the NumPy ``Corrector`` of the
    best model and the training history.
    """
    X, y, scalers = training_set(config, data, oin, rng)
    model = build_model(
        X.shape[-1],
        y.shape[-1],
        config.lookback,
        config.units,
        config.loss,
        config.metric,
        config.dtype,
    )
    model, history = train(
        model,
        X,
        y,
        out,
        config.epochs,
        config.batch_size,
        config.patience,
        config.seed,
        verbose=0 if config.quiet else 2,
    )
    scaling = scaling_factors(*scalers)
    save_npz(os.path.join(out, "scaling.npz"), **scaling)
    return Corrector(model, scaling), history


@dataclass
class Evaluation:
    """Truths (ne, B, nt+1), observations (ne, B, nb+1) and starts (ne, B).

    Truth 0 is the training truth of the data file; truths 1..B-1 are unseen.
    """

    utrue: np.ndarray
    uobs: np.ndarray
    x0: np.ndarray
    labels: list


def evaluation_truths(data, settings, ntest, seed):
    """The training truth and ``ntest`` unseen truths, each with a perturbed start.

    Drawn from a Generator of their own, so that every script and training mode
    with the same seed meets the same unseen truths.
    """
    rng = np.random.default_rng([seed, 1])
    utrue = data["utrue"][:, None]
    uobs = data["uobs"][:, None]
    x0 = perturb(utrue[..., 0], settings.var_init, rng)
    labels = ["training truth"]
    if ntest > 0:
        new_truth, new_obs, new_x0 = make_truths(settings, ntest, rng)
        utrue = np.concatenate([utrue, new_truth], axis=1)
        uobs = np.concatenate([uobs, new_obs], axis=1)
        x0 = np.concatenate([x0, new_x0], axis=1)
        labels += ["unseen truths"] * ntest
    return Evaluation(utrue, uobs, x0, labels)


def assimilate_all(config, evaluation, oin, networks):
    """Every baseline and every network on all truths of ``evaluation`` at once.

    ``networks`` maps a method name to (corrector, scheme). Returns name ->
    trajectory (ne, B, nt+1).
    """
    s, y = config.settings, evaluation.uobs[oin]
    rng = np.random.default_rng([config.seed, 2])
    runs = run_baselines(evaluation.x0, y, oin, s, rng)
    for name, (corrector, scheme) in networks.items():

        def run(x0, y, corrector=corrector, scheme=scheme):
            return assimilate_network(corrector, x0, y, s, config.lookback, scheme)

        runs[name] = each_or_nan(run, evaluation.x0, y, s.nt, name)
    return runs


def each_or_nan(run, x0, y, nt, name="run", warn=True):
    """run(x0, y) for a batch (ne, B) of truths; NaN trajectories where it blows up.

    After a blow-up the batch is split in halves and rerun (with fresh random draws
    where run makes any), so that only the truths that blow up get NaN; a warning
    says how many did.
    """
    result = _halves_after_blowup(run, x0, y, nt)
    blown = int(np.isnan(result[0, :, -1]).sum())
    if blown and warn:
        message = f"{name} blew up on {blown} of {x0.shape[1]} truths"
        warnings.warn(message + "; their trajectories are NaN", stacklevel=2)
    return result


def _halves_after_blowup(run, x0, y, nt):
    try:
        return run(x0, y)
    except Diverged:
        if x0.shape[1] == 1:
            return np.full(x0.shape + (nt + 1,), np.nan)
    half = x0.shape[1] // 2
    parts = [slice(0, half), slice(half, None)]
    return np.concatenate(
        [_halves_after_blowup(run, x0[:, p], y[:, p], nt) for p in parts], 1
    )


def experiment(config, data, oin, rng, out, schemes=None):
    """Train one network, assimilate with it next to the baselines, write everything.

    ``schemes`` maps a CSV stem to (method name, deployment scheme), by default
    ``{"ulstm": ("BiLSTM-GRU", "feedback")}``. Returns the metric rows, the
    evaluation truths and the runs.
    """
    schemes = schemes or {"ulstm": ("BiLSTM-GRU", "feedback")}
    # Train on (prior, observed values) -> truth - prior; best model in the .h5
    corrector, history = fit_corrector(config, data, oin, rng, out)

    # Assimilate the training truth and N_TEST unseen truths, with the baselines
    evaluation = evaluation_truths(data, config.settings, config.n_test, config.seed)
    networks = {name: (corrector, scheme) for name, scheme in schemes.values()}
    runs = assimilate_all(config, evaluation, oin, networks)

    # Write CSVs, metrics, config and plots
    csv_names = {stem: name for stem, (name, _) in schemes.items()}
    histories = {"BiLSTM-GRU": history}
    rows = write_results(out, config, evaluation, runs, histories, oin, csv_names)
    return rows, evaluation, runs


def observation_study(config, data, rng, out, trainings):
    """Train and assimilate for every me in ``config.me_list`` and training mode.

    Each me gets a subfolder ``me_{me}`` (models of several modes go one level
    deeper, one folder per mode); all meet the same unseen truths. Writes
    ``summary.csv`` and ``rmse_vs_me.png`` into ``out``; returns the summary rows.
    """
    s = config.settings
    evaluation = evaluation_truths(data, s, config.n_test, config.seed)
    summary = []
    for me in config.me_list:
        oin = observation_indices(s.ne, me)
        folder = os.path.join(out, f"me_{me}")
        networks, histories, csv_names = {}, {}, {}
        for mode in trainings:
            run = argparse.Namespace(**{**vars(config), "me": me, "training": mode})
            name, stem = "BiLSTM-GRU", "ulstm"
            if len(trainings) > 1:
                name, stem = f"BiLSTM-GRU {mode}", f"ulstm_{mode.replace('-', '_')}"
            model_folder = folder if len(trainings) == 1 else os.path.join(folder, mode)
            os.makedirs(model_folder, exist_ok=True)
            corrector, histories[name] = fit_corrector(
                run, data, oin, rng, model_folder
            )
            networks[name], csv_names[stem] = (corrector, "feedback"), name
        runs = assimilate_all(run, evaluation, oin, networks)
        shown = argparse.Namespace(**{**vars(config), "me": me})
        rows = write_results(folder, shown, evaluation, runs, histories, oin, csv_names)
        summary += [{"me": me, **row} for row in rows]
    write_metrics(os.path.join(out, "summary.csv"), summary)
    plot_rmse_against_me(os.path.join(out, "rmse_vs_me.png"), summary)
    return summary


# %% Writing results: CSV files, config and plots


def write_csv(path, table, header):
    """Rows = time, columns = named quantities, with a header line."""
    np.savetxt(
        path, table, delimiter=",", header=",".join(header), comments="", fmt="%.10g"
    )


def write_results(out, config, evaluation, runs, histories, oin, csv_names):
    """Write the CSV files, metrics, config and plots of one experiment into ``out``.

    ``csv_names`` maps a file stem (``ulstm``) to the method in ``runs`` it holds;
    trajectories are written for the training truth; ``histories`` maps a network
    to its training history. Returns the metric rows.
    """
    s = config.settings
    t, tobs = s.times()
    state = [f"u{i}" for i in range(s.ne)]
    write_csv(os.path.join(out, "t.csv"), t, ["t"])
    write_csv(os.path.join(out, "tobs.csv"), tobs, ["t"])
    write_csv(os.path.join(out, "utrue.csv"), evaluation.utrue[:, 0].T, state)
    write_csv(os.path.join(out, "uobs.csv"), evaluation.uobs[:, 0].T, state)
    files = {"uw": "free run", **csv_names}
    for stem, method in files.items():
        write_csv(os.path.join(out, f"{stem}.csv"), runs[method][:, 0].T, state)
    rows = evaluation_rows(evaluation.utrue, runs, evaluation.labels)
    write_metrics(os.path.join(out, "metrics.csv"), rows)
    with open(os.path.join(out, "config.json"), "w") as stream:
        json.dump(
            {**config_dict(config), "observed_indices": oin.tolist()}, stream, indent=2
        )
    plot_experiment(out, t, tobs, evaluation, runs, oin, list(csv_names.values()))
    plot_loss(os.path.join(out, "loss.png"), histories)
    return rows


def write_metrics(path, rows):
    """metrics.csv: one row per (method, evaluation set)."""
    import pandas as pd

    pd.DataFrame(rows).to_csv(path, index=False, float_format="%.6g")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"text.usetex": False, "figure.dpi": 110})
    return plt


def plot_experiment(out, t, tobs, evaluation, runs, oin, networks):
    """Time series, space-time fields and RMSE over time for one experiment."""
    picks = [0] + ([1] if len(evaluation.labels) > 1 else [])
    plot_series(
        os.path.join(out, "series.png"), t, tobs, evaluation, runs, oin, networks
    )
    plot_fields(
        os.path.join(out, "fields.png"), t, evaluation, runs[networks[0]], picks
    )
    plot_rmse(os.path.join(out, "rmse.png"), t, evaluation, runs, picks)


def plot_series(path, t, tobs, evaluation, runs, oin, networks):
    """Three variables of the training truth: observations, truth and every run."""
    plt = _pyplot()
    ne = evaluation.utrue.shape[0]
    variables = [int(oin[0]), int(oin[0]) + 1, ne // 2]
    fig, axes = plt.subplots(3, 1, figsize=(10, 7), sharex=True)
    for ax, i in zip(axes, variables):
        if i in oin:
            ax.plot(tobs, evaluation.uobs[i, 0], "ro", ms=2, label="observations")
        ax.plot(t, evaluation.utrue[i, 0], "k", lw=1.5, label="truth")
        ax.plot(t, runs["free run"][i, 0], "--", color="0.5", lw=1, label="free run")
        for colour, name in enumerate(networks, start=1):
            ax.plot(t, runs[name][i, 0], color=f"C{colour}", lw=1, label=name)
        ax.set_ylabel(f"u{i}" + (" (observed)" if i in oin else ""))
    axes[0].legend(ncol=5, fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.02))
    axes[-1].set_xlabel("t")
    _save(fig, path)


def plot_fields(path, t, evaluation, run, picks):
    """Space-time fields of truth, assimilation and error for the chosen truths."""
    plt = _pyplot()
    fig, axes = plt.subplots(
        len(picks), 3, figsize=(13, 3.2 * len(picks)), squeeze=False
    )
    ne = evaluation.utrue.shape[0]
    for row, b in zip(axes, picks):
        truth, estimate = evaluation.utrue[:, b], run[:, b]
        low, high = truth.min(), truth.max()
        reach = (high - low) / 2
        panels = [
            ("truth", truth, low, high),
            ("assimilation", estimate, low, high),
            ("error", estimate - truth, -reach, reach),
        ]
        for ax, (name, field, vmin, vmax) in zip(row, panels):
            image = ax.pcolormesh(
                t,
                np.arange(ne),
                field,
                cmap="RdBu_r",
                shading="auto",
                vmin=vmin,
                vmax=vmax,
            )
            fig.colorbar(image, ax=ax, extend="both")
            ax.set_title(f"{name}: {_truth_name(evaluation, b)}", fontsize=9)
            ax.set_xlabel("t")
            ax.set_ylabel("variable")
    _save(fig, path)


def plot_rmse(path, t, evaluation, runs, picks):
    """RMSE over time of every method for the training truth and one unseen truth."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(picks), figsize=(6 * len(picks), 4), squeeze=False)
    for ax, b in zip(axes[0], picks):
        for name, run in runs.items():
            ax.semilogy(
                t, rmse_over_time(evaluation.utrue[:, b], run[:, b]), lw=1, label=name
            )
        ax.set_title(_truth_name(evaluation, b))
        ax.set_xlabel("t")
        ax.set_ylabel("RMSE")
    axes[0, 0].legend(fontsize=8)
    _save(fig, path)


def plot_loss(path, histories):
    """Training and validation loss per epoch of each network."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, history in histories.items():
        for key, style in (("loss", "-"), ("val_loss", "--")):
            ax.semilogy(history[key], style, marker=".", label=f"{name} {key}")
    ax.set(xlabel="epoch", ylabel="loss")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_rmse_against_me(path, rows):
    """RMSE against the observed count: a colour per method, a line style per set."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5))
    methods = list(dict.fromkeys(row["method"] for row in rows))
    styles = {"training truth": ("s", ":"), "unseen truths": ("o", "-")}
    for label, (marker, line) in styles.items():
        for colour, method in enumerate(methods):
            picked = [
                r for r in rows if (r["method"], r["evaluation"]) == (method, label)
            ]
            ax.errorbar(
                [r["me"] for r in picked],
                [r["RMSE"] for r in picked],
                yerr=np.nan_to_num([r["RMSE std"] for r in picked]),
                color=f"C{colour}",
                marker=marker,
                linestyle=line,
                capsize=3,
                label=f"{method}, {label}",
            )
    counts = sorted({row["me"] for row in rows})
    ax.set(xlabel="observed variables me", ylabel="RMSE", xscale="log", yscale="log")
    ax.set_xticks(counts, [str(me) for me in counts])
    ax.minorticks_off()
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    _save(fig, path)


def _truth_name(evaluation, b):
    return "training truth" if b == 0 else f"unseen truth {b}"


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path)
    fig.clear()
    import matplotlib.pyplot as plt

    plt.close(fig)


def plot_generator(out, settings, utrue, uobs, runs, oin):
    """The generator's plots: the truth's space-time field and three variables."""
    s = settings
    t, tobs = s.times()
    evaluation = Evaluation(utrue[:, None], uobs[:, None], utrue[:, :1], ["truth"])
    batch = {name: run[:, None] for name, run in runs.items()}
    others = [name for name in runs if name != "free run"]
    plot_series(
        os.path.join(out, "series.png"), t, tobs, evaluation, batch, oin, others
    )
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.5))
    image = ax.pcolormesh(t, np.arange(s.ne), utrue, cmap="RdBu_r", shading="auto")
    fig.colorbar(image, ax=ax)
    ax.set(title="truth", xlabel="t", ylabel="variable")
    _save(fig, os.path.join(out, "truth.png"))


# %% Classical filters (baselines on the same truths and observations)

# Defaults from tune_baselines.py at ne=40, me=4, nf=10 (its docstring has the
# procedure and the expected RMSE): the settings of lowest RMSE without a blow-up,
# except where marked robust. With 4 of 40 variables observed a filter either tracks
# the truth (RMSE about 0.1-0.5) or loses it (RMSE 4-8), and a lost filter can blow
# up now and then, so each chosen setting was also tried in about 300 further runs.
# Above ne/4 = 10 the taper is not positive semidefinite (see localization_matrix).
ENKF_MEMBERS = 40  # 20 gave RMSE 3-4 at best, or blew up
ENKF_INFLATION = 1.02  # tried 1.0-1.05 (1.1 and above: RMSE > 4, or blow-ups)
ENKF_Q = 0.0  # model-noise variance per step; tried 0, 1e-4
ENKF_LOCALIZATION = 10.0  # Gaspari-Cohn half-width in grid points; inf: off
DENKF_MEMBERS = 40  # as ENKF_MEMBERS
DENKF_INFLATION = 1.0  # tried 1.0-1.05
DENKF_Q = 0.0  # tried 0, 1e-4
DENKF_LOCALIZATION = 8.0  # robust rather than best: see below
EKF_INFLATION = 0.75  # robust: see below
EKF_Q = 1e-2  # tried 1e-4-1e-2
EKF_LOCALIZATION = 8.0  # taper of the forecast P before each analysis; inf: off
NUDGING_GAIN = 0.3  # tried 0-1; 0.2-0.5 tie at me=4, 0.3 is best at me=8 and 20
# Blow-ups in the runs beyond the sweep, and the robust choices:
# - EnKF, radius 10: 1 in 306 runs. Without localization it blew up on most truths.
# - DEnKF: no localization with q=1e-4 had the lowest RMSE (2.0 on 48 truths) but
#   blew up in 6 of 96 further runs; radius 10 blew up on 2 of 48 truths, radius 8
#   in none of 282 runs (RMSE 2.4).
# - EKF: every setting stays near the free run at me=4 (RMSE 5.3-5.6) but for
#   inflation 0.9 without localization (RMSE 3.7 where it survived), which blew up
#   on 6 of 48 truths at me=4 and on 11 of 12 at me=2. Inflation 0.75 blew up in
#   none of 216 runs at me=4, nor of 18 at each of me = 2, 8 and 20. Tapering P
#   changes little: an EKF covariance has no sampling noise to remove.


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


def ring_distance(ne, i, j):
    """Distance in grid points between variables i and j on the periodic ring of ne."""
    d = np.abs(np.asarray(i) - np.asarray(j)) % ne
    return np.minimum(d, ne - d)


def gaspari_cohn(distance, radius):
    """Gaspari and Cohn (1999) fifth-order taper of half-width radius.

    A piecewise rational function of z = |distance| / radius: 1 at z = 0, 5/24 at
    z = 1, 0 from z = 2 on (support 2 radius). radius = inf gives 1 everywhere.
    """
    z = np.abs(np.asarray(distance, dtype=float)) / radius
    near = np.minimum(z, 1.0)  # clipped, so that neither branch divides by zero
    far = np.clip(z, 1.0, 2.0)
    inner = (((-0.25 * near + 0.5) * near + 0.625) * near - 5 / 3) * near**2 + 1
    outer = (
        ((((far / 12 - 0.5) * far + 0.625) * far + 5 / 3) * far - 5) * far
        + 4
        - 2 / (3 * far)
    )
    return np.where(z <= 1, inner, np.where(z < 2, outer, 0.0))


def localization_matrix(ne, oin, radius):
    """Gaspari-Cohn tapers (rho_xy (ne, me), rho_yy (me, me)) for observations at oin.

    radius is the half-width in grid points (weight 5/24 at radius, 0 from 2 radius
    on); radius = inf turns localization off (every weight exactly 1). With oin =
    arange(ne), rho_xy is the (ne, ne) taper of a state covariance. Distances are
    taken along the ring: the taper is positive semidefinite (a tapered covariance
    stays a covariance) when its support fits in half the ring, radius <= ne / 4.
    A larger finite radius may break that, and a warning says so.
    """
    if not radius > 0:
        raise UserError(
            f"localization radius must be positive (inf: off), got {radius}"
        )
    if ne / 4 < radius < np.inf:
        warnings.warn(
            f"localization radius {radius:g} > ne/4 = {ne / 4:g}: the taper may not "
            "be positive semidefinite, nor then the tapered covariance",
            stacklevel=3,
        )
    oin = np.asarray(oin, dtype=int).reshape(-1)
    rho_xy = gaspari_cohn(ring_distance(ne, np.arange(ne)[:, None], oin), radius)
    return rho_xy, rho_xy[oin]


def apply_gain(K, D):
    """K (*batch, ne, me) applied to D (me, *batch, N), giving (ne, *batch, N)."""
    return np.einsum("...ij,j...n->i...n", K, D)


def ensemble_gain(A, oin, r, rho=None):
    """Kalman gain K (*batch, ne, me) from the anomalies A (ne, *batch, N).

    With rho = (rho_xy, rho_yy) the gain is localized:
    K = (rho_xy * P H^T) (rho_yy * H P H^T + R)^-1.
    """
    HA = A[oin]
    C = np.einsum("i...n,j...n->...ij", HA, HA)  # (N-1) H P H^T
    HPt = np.einsum("i...n,j...n->...ij", HA, A)  # (N-1) H P
    if rho is not None:
        C, HPt = rho[1] * C, rho[0].T * HPt
    C = C + (A.shape[-1] - 1) * r * np.eye(len(oin))
    return np.swapaxes(np.linalg.solve(C, HPt), -1, -2)


def enkf_analysis(E, y, oin, r, rng, rho=None):
    """Stochastic EnKF analysis of E (ne, *batch, N) with observations y (me, *batch).

    Each member sees y plus its own N(0, r) perturbation; the perturbations are
    centred over the members, so the analysis mean is xbar + K (y - H xbar) exactly.
    rho = (rho_xy, rho_yy) localizes the gain (see ensemble_gain).
    """
    N = E.shape[-1]
    K = ensemble_gain(E - E.mean(-1, keepdims=True), oin, r, rho)
    eps = rng.standard_normal(np.shape(y) + (N,))
    eps = np.sqrt(r) * (eps - eps.mean(-1, keepdims=True))
    return E + apply_gain(K, np.asarray(y)[..., None] + eps - E[oin])


def denkf_analysis(E, y, oin, r, rng=None, rho=None):
    """Deterministic EnKF (Sakov and Oke 2008) of E (ne, *batch, N) with y (me, *batch).

    The mean gets the full gain, the anomalies half of it: A_a = A - K H A / 2.
    rho = (rho_xy, rho_yy) localizes the gain (see ensemble_gain).
    """
    xbar = E.mean(-1, keepdims=True)
    A = E - xbar
    K = ensemble_gain(A, oin, r, rho)
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


def run_free(x0, y, oin, settings, rng=None, model=None):
    """Trajectory (ne, *batch, nt+1) of the model from x0 without assimilation."""
    x0, y, oin = check_run_inputs(x0, y, oin, settings)
    step, _ = model or lorenz96_model(settings)
    return cycle(x0, settings, step, lambda x, j: x, lambda x: x)


def run_enkf(
    x0,
    y,
    oin,
    settings,
    rng,
    members=ENKF_MEMBERS,
    inflation=ENKF_INFLATION,
    q=ENKF_Q,
    localization=ENKF_LOCALIZATION,
    kind="stochastic",
    model=None,
):
    """Ensemble-mean trajectory (ne, *batch, nt+1) of a cycled EnKF of the given kind.

    The first draw from rng is the initial ensemble x0 + N(0, var_init). Every time
    step adds N(0, q) noise to every member (none when q = 0), every analysis uses a
    gain localized with a Gaspari-Cohn taper of half-width localization grid points
    (inf: none) and multiplies the analysis anomalies by inflation. With no observed
    variable no analysis is made, so the result is the mean of the free ensemble.
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
    rho = localization_matrix(s.ne, oin, localization)

    def forecast(E):
        E = step(E)
        return E + np.sqrt(q) * rng.standard_normal(E.shape) if q > 0 else E

    def analyse(E, j):
        if oin.size == 0:
            return E
        return inflate(analysis(E, y[..., j], oin, s.var_obs, rng, rho), inflation)

    E0 = initial_ensemble(x0, members, s.var_init, rng)
    return cycle(E0, settings, forecast, analyse, lambda E: E.mean(-1))


def run_denkf(
    x0,
    y,
    oin,
    settings,
    rng,
    members=DENKF_MEMBERS,
    inflation=DENKF_INFLATION,
    q=DENKF_Q,
    localization=DENKF_LOCALIZATION,
    model=None,
):
    """Ensemble-mean trajectory (ne, *batch, nt+1) of a cycled DEnKF; see run_enkf."""
    return run_enkf(
        x0, y, oin, settings, rng, members, inflation, q, localization, "denkf", model
    )


def run_ekf(
    x0,
    y,
    oin,
    settings,
    rng=None,
    inflation=EKF_INFLATION,
    q=EKF_Q,
    localization=EKF_LOCALIZATION,
    model=None,
):
    """Mean trajectory (ne, *batch, nt+1) of a cycled extended Kalman filter.

    P starts at var_init I and is propagated every step as M P M^T + q I with M the
    model Jacobian at the state before the step. Before each analysis the forecast
    P is tapered (Schur product) with the (ne, ne) Gaspari-Cohn matrix of half-width
    localization grid points (inf: no taper), and each analysis covariance is
    multiplied by inflation**2 (inflation scales standard deviations). With no
    observed variable the mean is the free run exactly.
    """
    x0, y, oin = check_run_inputs(x0, y, oin, settings)
    check_not_negative(inflation=inflation, q=q)
    step, jacobian = model or lorenz96_model(settings)
    s = settings
    rho = localization_matrix(s.ne, np.arange(s.ne), localization)[0]
    eye = np.eye(s.ne)
    P0 = np.broadcast_to(s.var_init * eye, x0.shape[1:] + eye.shape)

    def forecast(state):
        x, P = state
        M = jacobian(x)
        return step(x), M @ P @ np.swapaxes(M, -1, -2) + q * eye

    def analyse(state, j):
        if oin.size == 0:
            return state
        x, P = ekf_analysis(state[0], rho * state[1], y[..., j], oin, s.var_obs)
        return x, inflation**2 * P

    return cycle((x0, P0), settings, forecast, analyse, lambda xP: xP[0])


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

    return cycle(x0, settings, step, analyse, lambda x: x)


BASELINES = {
    "free run": run_free,
    "EnKF": run_enkf,
    "DEnKF": run_denkf,
    "EKF": run_ekf,
    "nudging": run_nudging,
}


def run_baselines(x0, y, oin, settings, rng, options=None, model=None):
    """Mean trajectories (ne, *batch, nt+1) of every method in BASELINES, by name.

    options maps a method name to keyword arguments that replace its defaults. Each
    method draws from its own child of rng. A method that blows up is rerun truth by
    truth; the truths where it blows up get NaN trajectories and a warning.
    """
    options = options or {}
    unknown = sorted(set(options) - set(BASELINES))
    if unknown:
        raise UserError(f"unknown baseline(s) {unknown}; choose from {list(BASELINES)}")
    x0, y = np.asarray(x0, dtype=float), np.asarray(y, dtype=float)
    single = x0.ndim == 1
    if single:
        x0, y = x0[:, None], y[:, None]
    out = {}
    for (name, run), child in zip(BASELINES.items(), rng.spawn(len(BASELINES))):
        kw = {"model": model, **options.get(name, {})}

        def one(x0, y, run=run, child=child, kw=kw):
            return run(x0, y, oin, settings, child, **kw)

        out[name] = each_or_nan(one, x0, y, settings.nt, name)
    return {name: run[:, 0] for name, run in out.items()} if single else out


def rmse_second_half(xx, xx_true):
    """Time mean over the second half of the RMSE over variables, one per truth."""
    half = xx.shape[-1] // 2
    err = xx[..., half:] - xx_true[..., half:]
    return np.sqrt((err**2).mean(0)).mean(-1)
