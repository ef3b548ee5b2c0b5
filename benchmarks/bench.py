"""Speed benchmark: every stage of the toolkit against a naive reference.

Times, in one process and side by side, the stages of the generator and of an
experiment at their default size (ne=40, dt=0.005, nt=2000, nf=10, npe=400, me=4):
truth and spin-up, the training ensemble, the EnKF baseline, the training set, one
training epoch, the cycled assimilation with the network; then the whole generator
and its peak memory in a subprocess. "ours" calls the functions of common.py; the
reference is the same maths written the naive way (``np.roll`` tendency, one member
and one time step at a time, ``np.vstack`` windows, one ``model.predict`` per
observation time), kept in this file. Times are medians over ``--repeats`` runs, the
two sides run alternately; "speed-up" is reference / ours. The slowest references
are timed on a part of the work and scaled up linearly, as the note column says.

Run from the repository root:

    python benchmarks/bench.py               # full size, about 3 minutes
    python benchmarks/bench.py --quick       # tiny smoke size, about 15 s
    python benchmarks/bench.py --scaling     # add time against ne and npe (+2 min)
    python benchmarks/bench.py --csv t.csv   # also write the rows to a CSV file

The machine this was written on had 2 shared cores: expect 10-30 % noise between
runs; the ratios are steadier than the absolute times.
"""

import argparse
import csv
import inspect
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import common  # noqa: E402 (needs the repository root on sys.path)

GENERATOR = os.path.join(ROOT, "lorenz96_bilstm_gru_sparse.py")
TABLE_HEADER = (
    f"{'stage':<36}{'ours (s)':>10}{'reference (s)':>15}{'speed-up':>10}  note"
)


@dataclass(frozen=True)
class Size:
    """Problem size of one benchmark run and how much of each reference is timed."""

    settings: common.Settings
    npe: int  # members of the training ensemble and of the EnKF
    me: int  # observed variables
    ref_members: int  # members the reference ensemble is timed on (then scaled)
    ref_steps: int  # time steps the reference EnKF is timed on (then scaled)
    units: tuple  # BiLSTM, GRU and Dense widths
    batch_size: int
    truths: int  # truths assimilated in one batch
    scaling_ne: tuple  # ne of the scaling table, at the largest npe
    scaling_npe: tuple  # npe of the scaling table, at the smallest ne


FULL = Size(
    settings=common.Settings(),
    npe=400,
    me=4,
    ref_members=40,  # the full reference ensemble would take about a minute
    ref_steps=200,  # 20 of the 200 analyses
    units=(80, 80, 80),
    batch_size=128,
    truths=6,
    scaling_ne=(40, 100, 200, 400),
    scaling_npe=(100, 200, 400),
)
QUICK = replace(
    FULL,
    settings=common.Settings(tmax=0.5),
    npe=20,
    ref_members=5,
    ref_steps=50,
    units=(8, 8, 8),
    truths=2,
    scaling_ne=(8, 16),
    scaling_npe=(10, 20),
)


@dataclass
class Row:
    stage: str
    ours: float
    reference: float = float("nan")
    note: str = ""

    @property
    def ratio(self):
        return self.reference / self.ours


# %% Naive references: the same maths, written the slow way


def naive_rhs(u, forcing):
    """Lorenz-96 tendency of one state with np.roll."""
    return (np.roll(u, -1) - np.roll(u, 2)) * np.roll(u, 1) - u + forcing


def naive_rk4(u, dt, forcing):
    k1 = naive_rhs(u, forcing)
    k2 = naive_rhs(u + 0.5 * dt * k1, forcing)
    k3 = naive_rhs(u + 0.5 * dt * k2, forcing)
    k4 = naive_rhs(u + dt * k3, forcing)
    return u + dt / 6.0 * (k1 + 2.0 * (k2 + k3) + k4)


def naive_integrate(u0, nsteps, dt, forcing):
    """Trajectory (ne, nsteps+1) of one state, one list entry per step."""
    states = [u0]
    for _ in range(nsteps):
        states.append(naive_rk4(states[-1], dt, forcing))
    return np.array(states).T


def naive_spin_up(s):
    u = np.full(s.ne, s.forcing)
    u[s.ne // 2 - 1] += 0.01
    return naive_integrate(u, round(s.tini / s.dt), s.dt, s.forcing)[:, -1]


def naive_ensemble(starts, s):
    """(ne, M, nt+1): each member integrated on its own, then stacked."""
    members = [
        naive_integrate(starts[:, m], s.nt, s.dt, s.forcing)
        for m in range(starts.shape[1])
    ]
    return np.stack(members, axis=1)


def naive_enkf(x0, y, oin, s, rng, members, inflation, q, nsteps):
    """Stochastic EnKF mean (ne, nsteps+1), forecasting member by member.

    The analysis forms P and inverts H P H^T + R as written in the textbooks; its
    random draws differ from common.run_enkf's, so only the cost is comparable.
    """
    ne, me, r = s.ne, len(oin), s.var_obs
    H = np.zeros((me, ne))
    H[np.arange(me), oin] = 1.0
    E = [x0 + np.sqrt(s.var_init) * rng.standard_normal(ne) for _ in range(members)]
    means = [np.mean(E, axis=0)]
    for k in range(1, nsteps + 1):
        for i in range(members):
            E[i] = naive_rk4(E[i], s.dt, s.forcing)
            if q > 0:
                E[i] = E[i] + np.sqrt(q) * rng.standard_normal(ne)
        if k % s.nf == 0:
            X = np.array(E).T
            A = X - X.mean(axis=1, keepdims=True)
            P = A @ A.T / (members - 1)
            K = P @ H.T @ np.linalg.inv(H @ P @ H.T + r * np.eye(me))
            D = y[:, k // s.nf, None] + np.sqrt(r) * rng.standard_normal((me, members))
            X = X + K @ (D - H @ X)
            xbar = X.mean(axis=1, keepdims=True)
            E = list((xbar + inflation * (X - xbar)).T)
        means.append(np.mean(E, axis=0))
    return np.array(means).T


def naive_windows(features, lookback):
    """Windows (n, lookback, nfeat) of one series, each row stacked with vstack."""
    m = len(features)
    X = np.zeros((m - lookback + 1, lookback, features.shape[1]))
    for i in range(m - lookback + 1):
        window = features[i]
        for j in range(1, lookback):
            window = np.vstack((window, features[i + j]))
        X[i] = window
    return X


def naive_training_set(data, oin, s, lookback):
    """(prior, observed values) windows and truth - prior labels, member by member."""
    uwe, utrue, uobs = data["uwe"], data["utrue"], data["uobs"]
    Xs, ys = [], []
    for m in range(uwe.shape[1]):
        features, labels = [], []
        for j in range(s.nb + 1):
            prior = uwe[:, m, j * s.nf]
            features.append(np.hstack((prior, uobs[oin, j])))
            labels.append(utrue[:, j * s.nf] - prior)
        Xs.append(naive_windows(np.array(features), lookback))
        ys.append(np.array(labels)[lookback - 1 :])
    return np.vstack(Xs), np.vstack(ys)


def naive_assimilate(model, scaler_x, scaler_y, x0, y, s):
    """One truth, lookback 1: RK4 and one model.predict per observation time."""
    u, states = x0, [x0]
    for k in range(1, s.nt + 1):
        u = naive_rk4(u, s.dt, s.forcing)
        if k % s.nf == 0:
            window = scaler_x.transform(np.hstack((u, y[:, k // s.nf]))[None])
            scaled = model.predict(window[:, None, :], verbose=0)
            u = u + scaler_y.inverse_transform(scaled)[0]
        states.append(u)
    return np.array(states).T


# %% Timing


def timed(function):
    clock = time.perf_counter()
    result = function()
    return time.perf_counter() - clock, result


def compare(stage, ours, reference, repeats, scale=1.0, note=""):
    """Median seconds of ours and of reference (times ``scale``), run alternately."""
    print(f"  {stage} ...", flush=True)
    ours_s, ref_s = [], []
    for _ in range(repeats):
        seconds, ours_out = timed(ours)
        ours_s.append(seconds)
        if reference is not None:
            seconds, ref_out = timed(reference)
            ref_s.append(seconds * scale)
    row = Row(stage, float(np.median(ours_s)), float(np.median(ref_s or np.nan)), note)
    return row, ours_out, (ref_out if reference is not None else None)


def enkf_defaults():
    """Inflation and model noise q of common.run_enkf's signature."""
    parameters = inspect.signature(common.run_enkf).parameters
    return parameters["inflation"].default, parameters["q"].default


# %% Stages


def truth(s):
    """Spin-up and truth (ne, nt+1), as the generator makes them."""
    return common.integrate(common.spin_up(s), s.nt, s.dt, s.forcing)


def windows(data, oin, s, lookback):
    """Training windows X and labels y, as common.training_set makes them."""
    features, labels = common.same_trajectory_pairs(data, oin, s)
    return common.create_training_data_lstm(features, labels, lookback)


def bench_simulation(size, repeats, rng):
    """Truth, ensemble and EnKF rows, and the data a generator run would save."""
    s, npe = size.settings, size.npe
    oin = common.observation_indices(s.ne, size.me)
    rows = []

    row, utrue, utrue_ref = compare(
        "truth + spin-up",
        lambda: truth(s),
        lambda: naive_integrate(naive_spin_up(s), s.nt, s.dt, s.forcing),
        repeats,
    )
    row.note = _same(utrue, utrue_ref)
    rows.append(row)

    u0 = utrue[:, 0]
    starts = common.perturb(np.repeat(u0[:, None], npe, 1), s.var_init, rng)
    part = min(size.ref_members, npe)
    row, uwe, uwe_ref = compare(
        f"ensemble of {npe} priors",
        lambda: common.integrate(starts, s.nt, s.dt, s.forcing),
        lambda: naive_ensemble(starts[:, :part], s),
        repeats,
        scale=npe / part,
    )
    row.note = f"reference: {part} members x {npe / part:g}; " + _same(
        uwe[:, :part], uwe_ref
    )
    rows.append(row)
    loop, _, _ = compare(
        "member loop of integrate",
        lambda: [
            common.integrate(starts[:, m], s.nt, s.dt, s.forcing) for m in range(part)
        ],
        None,
        repeats,
    )
    note = f"reference: common.integrate per member, {part} members x {npe / part:g}"
    rows.append(
        Row("  same, against a member loop", row.ours, loop.ours * npe / part, note)
    )

    uobs = common.observe(utrue, s, rng)
    rows.append(bench_enkf(size, repeats, u0, uobs[oin], oin, rng))
    return rows, {"utrue": utrue, "uobs": uobs, "uwe": uwe}


def bench_enkf(size, repeats, u0, y, oin, rng):
    s, npe = size.settings, size.npe
    stage = f"EnKF, {npe} members"
    x0 = common.perturb(u0, s.var_init, rng)
    inflation, q = enkf_defaults()
    steps = min(size.ref_steps, s.nt)
    row, _, _ = compare(
        stage,
        lambda: common.run_enkf(x0, y, oin, s, rng, members=npe),
        lambda: naive_enkf(x0, y, oin, s, rng, npe, inflation, q, steps),
        repeats,
        scale=s.nt / steps,
        note=f"reference: {steps} of {s.nt} steps x {s.nt / steps:g}",
    )
    return row


def bench_training_set(size, repeats, data):
    s = size.settings
    oin = common.observation_indices(s.ne, size.me)
    rows = []
    for lookback in (1, 3):
        row, (X, y), (X_ref, y_ref) = compare(
            f"training set, lookback {lookback}",
            lambda lookback=lookback: windows(data, oin, s, lookback),
            lambda lookback=lookback: naive_training_set(data, oin, s, lookback),
            repeats,
        )
        row.note = f"X {X.shape}; " + _same((X, y), (X_ref, y_ref))
        rows.append(row)
    X, y = windows(data, oin, s, 1)
    Xs, ys, scaler_x, scaler_y = common.scale_training_set(X, y)
    return rows, (Xs.astype("float32"), ys.astype("float32"), scaler_x, scaler_y)


def bench_training(size, repeats, training_set, folder):
    """One epoch through common.train against a plain model.fit on the same split."""
    import keras
    from sklearn.model_selection import train_test_split

    X, y = training_set[:2]
    split = train_test_split(
        X, y, test_size=0.2, shuffle=True, random_state=common.SEED
    )
    Xt, Xv, yt, yv = split

    def fresh_model():
        keras.utils.set_random_seed(common.SEED)
        args = (X.shape[-1], y.shape[-1], 1, size.units, "huber_loss", "mae")
        return common.build_model(*args)

    def ours():
        model = fresh_model()
        clock = time.perf_counter()
        trained, _ = common.train(
            model, X, y, folder, 1, size.batch_size, 50, common.SEED, verbose=0
        )
        return time.perf_counter() - clock, trained

    def plain():
        model = fresh_model()
        clock = time.perf_counter()
        model.fit(
            Xt,
            yt,
            validation_data=(Xv, yv),
            epochs=1,
            batch_size=size.batch_size,
            verbose=0,
        )
        return time.perf_counter() - clock

    print("  one training epoch ...", flush=True)
    ours_s, plain_s = [], []
    for repeat in range(min(repeats, 2)):  # plain first on the second repeat
        if repeat % 2:
            plain_s.append(plain())
        seconds, model = ours()
        ours_s.append(seconds)
        if not repeat % 2:
            plain_s.append(plain())
    row = Row(
        "one epoch: common.train", float(np.median(ours_s)), float(np.median(plain_s))
    )
    row.note = (
        f"reference: plain model.fit; {len(Xt) / row.ours:,.0f} vs "
        f"{len(Xt) / row.reference:,.0f} samples/s"
    )
    return row, model


def bench_assimilation(size, repeats, model, scalers, rng):
    """2000 steps with nb corrections: 1 truth, then a batch, against a predict loop."""
    s, truths = size.settings, size.truths
    oin = common.observation_indices(s.ne, size.me)
    _, uobs, x0 = common.make_truths(s, truths, rng)
    y = uobs[oin]
    corrector = common.Corrector(model, common.scaling_factors(*scalers))

    def ours(batch):
        return common.assimilate_network(corrector, x0[:, :batch], y[:, :batch], s, 1)

    one, _, _ = compare(
        "assimilation, 1 truth",
        lambda: ours(1),
        lambda: naive_assimilate(model, *scalers, x0[:, 0], y[:, 0], s),
        repeats,
        note=f"{s.nb} corrections; reference: one model.predict each",
    )
    batched, _, _ = compare(
        f"assimilation, {truths} truths batched", lambda: ours(truths), None, repeats
    )
    batched.reference = truths * one.reference
    batched.note = f"reference: 1 truth x {truths}"
    return [one, batched]


# %% The whole generator in a subprocess: wall time and peak memory

# The child reports VmHWM, the peak of its own memory map: its ru_maxrss would also
# count the peak of this process, which Linux carries over the fork and exec.
REPORT_PEAK = """
with open("/proc/self/status") as status:
    peak = next(line.split()[1] for line in status if line.startswith("VmHWM"))
print("peak_rss_kb", peak, file=sys.stderr)
"""

RUN_SCRIPT = """
import runpy, sys
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

BARE_IMPORTS = """
import sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot
import common  # noqa: E402 (needs the repository root on sys.path)
"""


def peak_rss_mib(code, args=()):
    """Wall seconds and peak resident memory (MiB) of ``python -c code args``."""
    clock = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - clock
    if done.returncode != 0:
        raise RuntimeError(f"subprocess failed:\n{done.stdout}\n{done.stderr}")
    kb = int(done.stderr.split("peak_rss_kb")[-1].split()[0])
    return seconds, kb / 1024


def size_flags(size):
    s = size.settings
    flags = {"--ne": s.ne, "--tmax": s.tmax, "--npe": size.npe, "--me": size.me}
    return [str(item) for pair in flags.items() for item in pair]


def bench_generator(size, repeats, reference, folder):
    """Wall time and memory of ``python lorenz96_bilstm_gru_sparse.py``."""
    stage = "whole generator (subprocess)"
    print(f"  {stage} ...", flush=True)
    data = os.path.join(folder, "data.npz")
    flags = size_flags(size) + ["--data", data, "--out", os.path.join(folder, "out")]
    runs = [
        peak_rss_mib(RUN_SCRIPT + REPORT_PEAK, [GENERATOR, *flags])
        for _ in range(repeats)
    ]
    seconds, peak = np.median([t for t, _ in runs]), max(mib for _, mib in runs)
    _, baseline = peak_rss_mib(BARE_IMPORTS + REPORT_PEAK)
    with np.load(data) as archive:
        saved = sum(archive[key].nbytes for key in archive.files) / 2**20
        uwe = archive["uwe"].nbytes / 2**20
    note = "reference: 2 x truth + ensemble + EnKF; no start-up, plots or saving"
    memory = {"peak": peak, "baseline": baseline, "saved": saved, "uwe": uwe}
    memory["file"] = os.path.getsize(data) / 2**20
    return Row(stage, float(seconds), reference, note), memory


# %% Scaling with ne and npe


def scaling_cell(size, ne, npe, repeats, rng):
    """Seconds of each stage of ours at one (ne, npe)."""
    s = replace(size.settings, ne=ne)
    oin = common.observation_indices(ne, 4)
    cell = {}

    def best(name, function):
        seconds = []
        for _ in range(repeats):
            elapsed, result = timed(function)
            seconds.append(elapsed)
        cell[name] = float(np.median(seconds))
        return result

    utrue = best("truth", lambda: truth(s))
    u0 = utrue[:, 0]
    starts = common.perturb(np.repeat(u0[:, None], npe, 1), s.var_init, rng)
    uwe = best("ensemble", lambda: common.integrate(starts, s.nt, s.dt, s.forcing))
    uobs = common.observe(utrue, s, rng)
    best("EnKF", lambda: common.run_enkf(u0, uobs[oin], oin, s, rng, members=npe))
    data = {"utrue": utrue, "uobs": uobs, "uwe": uwe}
    X, y = best("training set", lambda: windows(data, oin, s, 1))
    model = constant_model(X.shape[-1], ne, size.units)
    scalers = common.scale_training_set(X, y)[2:]
    corrector = common.Corrector(model, common.scaling_factors(*scalers))
    x0 = common.perturb(u0[:, None], s.var_init, rng)
    best(
        "assimilation",
        lambda: common.assimilate_network(corrector, x0, uobs[oin, None], s, 1),
    )
    return cell


def constant_model(nfeatures, ne, units):
    """An untrained network whose last layer is zero: the same cost, no blow-up."""
    model = common.build_model(nfeatures, ne, 1, units, "huber_loss", "mae")
    last = model.layers[-1]
    last.set_weights([np.zeros_like(w) for w in last.get_weights()])
    return model


def scaling_table(size, repeats, rng):
    """Time of each stage against ne (at the largest npe) and npe (smallest ne)."""
    largest, smallest = max(size.scaling_npe), min(size.scaling_ne)
    cells = [(ne, largest) for ne in size.scaling_ne]
    cells += [(smallest, npe) for npe in size.scaling_npe if npe != largest]
    names = ("truth", "ensemble", "EnKF", "training set", "assimilation")
    rows = []
    for ne, npe in cells:
        print(f"  scaling: ne={ne}, npe={npe} ...", flush=True)
        rows.append(((ne, npe), scaling_cell(size, ne, npe, repeats, rng)))
    print(f"\nseconds (median of {repeats}) against ne and npe; assimilation: 1 truth")
    print(f"{'ne':>5}{'npe':>6}" + "".join(f"{name:>14}" for name in names))
    for (ne, npe), cell in sorted(rows):
        print(
            f"{ne:>5}{npe:>6}"
            + "".join(f"{cell.get(name, np.nan):>14.3f}" for name in names)
        )
    return rows


# %% Output


def _same(ours, reference):
    """'identical' or the largest difference between two (tuples of) arrays."""
    pairs = zip(ours, reference) if isinstance(ours, tuple) else [(ours, reference)]
    worst = max(float(np.max(np.abs(a - b))) for a, b in pairs)
    return "identical" if worst == 0 else f"max difference {worst:.1e}"


def print_table(rows):
    print("\n" + TABLE_HEADER)
    for row in rows:
        ratio = f"{row.ratio:.1f}x" if np.isfinite(row.ratio) else "-"
        reference = f"{row.reference:.3f}" if np.isfinite(row.reference) else "-"
        ours = f"{row.ours:.3f}" if np.isfinite(row.ours) else "-"
        print(f"{row.stage:<36}{ours:>10}{reference:>15}{ratio:>10}  {row.note}")


def print_memory(memory):
    held = memory["peak"] - memory["baseline"]
    print(
        f"\ngenerator memory: peak {memory['peak']:.0f} MiB, {held:.0f} MiB above the"
        f" bare imports ({memory['baseline']:.0f} MiB); saved arrays"
        f" {memory['saved']:.0f} MiB (uwe {memory['uwe']:.0f} MiB, file"
        f" {memory['file']:.0f} MiB); held / saved = {held / memory['saved']:.2f}"
    )


def write_csv(path, rows, scaling):
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(
            ["table", "stage", "ne", "npe", "ours_s", "reference_s", "note"]
        )
        for row in rows:
            writer.writerow(
                ["stages", row.stage, "", "", row.ours, row.reference, row.note]
            )
        for (ne, npe), cell in scaling:
            for name, seconds in cell.items():
                writer.writerow(["scaling", name, ne, npe, seconds, "", ""])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per stage")
    parser.add_argument("--quick", action="store_true", help="tiny smoke-test size")
    parser.add_argument("--scaling", action="store_true", help="add the scaling table")
    parser.add_argument("--csv", metavar="PATH", help="also write the rows to PATH")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    size = QUICK if args.quick else FULL
    s = size.settings
    print(
        f"bench: ne={s.ne} dt={s.dt} nt={s.nt} nf={s.nf} npe={size.npe} me={size.me}"
        f" repeats={args.repeats} numpy={np.__version__}"
    )
    rng = np.random.default_rng(common.SEED)
    with tempfile.TemporaryDirectory() as folder:
        rows, data = bench_simulation(size, args.repeats, rng)
        more, training_set = bench_training_set(size, args.repeats, data)
        rows += more
        del data
        row, model = bench_training(size, args.repeats, training_set, folder)
        rows.append(row)
        rows += bench_assimilation(size, args.repeats, model, training_set[2:], rng)
        truth, ensemble, _, enkf = rows[:4]
        naive = 2 * truth.reference + ensemble.reference + enkf.reference
        row, memory = bench_generator(size, args.repeats, naive, folder)
        rows.append(row)
    print_table(rows)
    print_memory(memory)
    scaling = scaling_table(size, args.repeats, rng) if args.scaling else []
    if args.csv:
        write_csv(args.csv, rows, scaling)


if __name__ == "__main__":
    main()
