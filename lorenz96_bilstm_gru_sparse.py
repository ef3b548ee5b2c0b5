"""Lorenz-96 data generator: truth, observations, free run, EnKF and prior ensemble.

Simulates the Lorenz-96 model with RK4 and writes ``lstm_data_sparse.npz`` with
``utrue`` (ne, nt+1), ``uobs`` (ne, nb+1), ``uwe`` (ne, npe, nt+1), the free run
``uw``, the EnKF analysis mean ``uenkf``, the observed indices ``oin`` and the
generation settings as ``setting_*`` numbers (``np.load`` needs no pickle). Plots of
the truth and of three variables go to ``results/lorenz96_bilstm_gru_sparse/``.

Run: ``python lorenz96_bilstm_gru_sparse.py`` (``--help`` lists every setting).
At the defaults (seed 42) it prints a free-run RMSE of 5.39 and an EnKF RMSE of 0.28.
"""

import time

import numpy as np

import common

ME = common.ME  # observed variables the EnKF baseline assimilates
NPE = common.NPE  # prior trajectories in uwe, also the EnKF's ensemble size
SEED = common.SEED  # seeds every random draw of the run
ENKF_LOCALIZATION = float("inf")  # none: 400 members suffice; with few members, 10
UWE_DTYPE = "float64"  # "float32" halves the size of uwe (for large ne)
UWE_EVERY = 1  # keep every n-th step of uwe; set it to NF to keep observation times


def simulate(config, rng):
    """Truth, observations, free run and training ensemble, with stage timings."""
    s = config.settings
    clock = time.perf_counter()
    u0 = common.spin_up(s)
    utrue = common.integrate(u0, s.nt, s.dt, s.forcing)
    uobs = common.observe(utrue, s, rng)
    uw = common.integrate(common.perturb(u0, s.var_init, rng), s.nt, s.dt, s.forcing)
    print(f"truth, observations and free run: {time.perf_counter() - clock:.2f} s")
    clock = time.perf_counter()
    starts = common.perturb(np.repeat(u0[:, None], config.npe, 1), s.var_init, rng)
    uwe = common.integrate(
        starts, s.nt, s.dt, s.forcing, config.uwe_every, np.dtype(config.uwe_dtype)
    )
    print(f"ensemble of {config.npe} priors: {time.perf_counter() - clock:.2f} s")
    return u0, utrue, uobs, uw, uwe


def main():
    config = common.parse_config(globals())
    common.echo_config(config)
    s = config.settings
    oin = common.observation_indices(s.ne, config.me)
    if config.npe < 2:
        raise common.UserError(f"npe must be at least 2 for the EnKF, got {config.npe}")
    if s.nf % config.uwe_every:
        raise common.UserError(f"uwe_every={config.uwe_every} must divide nf={s.nf}")
    rng = np.random.default_rng(config.seed)

    # Simulate
    u0, utrue, uobs, uw, uwe = simulate(config, rng)

    # EnKF baseline on the observed variables
    clock = time.perf_counter()
    x0 = common.perturb(u0, s.var_init, rng)

    def enkf(x0, y):
        radius = config.enkf_localization
        return common.run_enkf(x0, y, oin, s, rng, config.npe, localization=radius)

    # a filter that blows up is a result (NaN), not a reason to lose the data file
    uenkf = common.each_or_nan(enkf, x0[:, None], uobs[oin, None], s.nt, "EnKF")[:, 0]
    print(f"EnKF with {config.npe} members: {time.perf_counter() - clock:.2f} s")
    runs = {"free run": uw, "EnKF": uenkf}
    rows = [{"run": name, **common.metrics(utrue, run)} for name, run in runs.items()]

    # Write
    clock = time.perf_counter()
    with common.staged_output(config.out) as out:
        common.plot_generator(out, s, utrue, uobs, runs, oin)
        record = common.settings_record(
            s,
            npe=config.npe,
            me=config.me,
            seed=config.seed,
            uwe_every=config.uwe_every,
        )
        arrays = dict(utrue=utrue, uobs=uobs, uwe=uwe, uw=uw, uenkf=uenkf, oin=oin)
        common.save_npz(config.data, **arrays, **record)
    elapsed = time.perf_counter() - clock
    print(f"saved {config.data} and plots in {config.out}: {elapsed:.2f} s")

    # Report
    print(f"\n{'run':<10}{'MAE':>9}{'MSE':>9}{'RMSE':>9}{'R2':>9}")
    for row in rows:
        print(
            f"{row['run']:<10}"
            + "".join(f"{row[k]:9.4f}" for k in ("MAE", "MSE", "RMSE", "R2"))
        )


if __name__ == "__main__":
    common.run_cli(main)
