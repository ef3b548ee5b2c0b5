"""Experiment 4, two deployment schemes of the same trained network side by side.

Trains the network of experiment 1 once, then deploys it twice: V1 ("feedback")
forecasts from each corrected state, as in experiment 1; V2 ("copy") keeps
forecasting the uncorrected state and only adds the correction to a copy at
observation times, so between observations V2 shows the free forecast.

Writes into ``results/da_bilstm_gru_4_sparse/``: ``model_bilstm_gru.h5``,
``training.log``, ``t.csv``, ``tobs.csv``, ``utrue.csv``, ``uobs.csv``, ``uw.csv``,
``ulstm1.csv`` (V1), ``ulstm2.csv`` (V2), ``metrics.csv`` (both schemes and the
baselines), ``data_{me}.npz`` (t, tobs, meshgrids, utrue, uobs, uw, ulstm1, ulstm2,
oin), ``config.json`` and plots.

Run: ``python lorenz96_bilstm_gru_sparse.py`` then ``python da_bilstm_gru_4_sparse.py``
(``--help`` lists every hyperparameter). At the defaults (seed 42, about 5 minutes on
2 CPU cores) V1 has RMSE 0.89 on the training truth and 9.4 ± 0.6 on the unseen
truths, V2 4.9 and 5.7 ± 0.1 (the free run: 5.2 and 5.4 ± 0.1).
"""

import numpy as np

import common

ME = common.ME  # observed variables fed to the network (1..ne)
LOOKBACK = common.LOOKBACK  # observation times per input sequence
UNITS = (80, 80, 80)  # BiLSTM, GRU and Dense widths
LOSS = "huber_loss"  # the custom loss of common.py; or "keras_huber"
METRIC = "mae"  # reported by Keras during training
EPOCHS = 100  # upper limit; early stopping (PATIENCE) may end training sooner
BATCH_SIZE = 128  # samples per gradient step
PATIENCE = 50  # early-stopping patience in epochs
DTYPE = "float32"  # network and training data precision
TRAINING = "same-trajectory"  # as published; "many-truths" generalizes to new truths
TRAIN_TRUTHS = 400  # independent truths in "many-truths" mode
PRIOR_SPREAD = (0.05, 3.0)  # prior error std range, "many-truths"; (0.01, 1) did worse
N_TEST = 5  # unseen truths the model is also evaluated on
SEED = common.SEED


def save_arrays(out, config, evaluation, runs, oin):
    """data_{me}.npz: the training truth's trajectories with their grids."""
    s = config.settings
    t, tobs = s.times()
    tmesh, xmesh = np.meshgrid(t, np.arange(s.ne))
    tobsmesh, xobsmesh = np.meshgrid(tobs, np.arange(s.ne))
    trajectories = {
        "uw": runs["free run"],
        "ulstm1": runs["BiLSTM-GRU V1"],
        "ulstm2": runs["BiLSTM-GRU V2"],
    }
    common.save_npz(
        f"{out}/data_{config.me}.npz",
        t=t,
        tobs=tobs,
        tmesh=tmesh,
        xmesh=xmesh,
        tobsmesh=tobsmesh,
        xobsmesh=xobsmesh,
        utrue=evaluation.utrue[:, 0],
        uobs=evaluation.uobs[:, 0],
        oin=oin,
        **{name: run[:, 0] for name, run in trajectories.items()},
    )


def main():
    config, data, oin, rng = common.start(globals())
    schemes = {
        "ulstm1": ("BiLSTM-GRU V1", "feedback"),
        "ulstm2": ("BiLSTM-GRU V2", "copy"),
    }

    with common.staged_output(config.out) as out:
        # Train once, deploy with both schemes, write; then the arrays of data_{me}
        rows, evaluation, runs = common.experiment(config, data, oin, rng, out, schemes)
        save_arrays(out, config, evaluation, runs, oin)

    common.print_table(rows, f"{config.script}: results in {config.out}")


if __name__ == "__main__":
    common.run_cli(main)
