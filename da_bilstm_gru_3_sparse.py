"""Experiment 3, wide network in double precision.

Same data and training as experiment 1 with a wider network, BiLSTM(256)-GRU(128)-
Dense(64), computed in float64 end to end (training data, weights and the NumPy
forward pass used during assimilation).

Writes into ``results/da_bilstm_gru_3_sparse/`` the same files as experiment 1:
``model_bilstm_gru.h5``, ``training.log``, ``t.csv``, ``tobs.csv``, ``utrue.csv``,
``uobs.csv``, ``uw.csv``, ``ulstm.csv``, ``metrics.csv``, ``config.json``, plots.

Run: ``python lorenz96_bilstm_gru_sparse.py`` then ``python da_bilstm_gru_3_sparse.py``
(``--help`` lists every hyperparameter). An epoch is several times slower than in
experiment 1 (wider layers, float64).
"""

import common

ME = common.ME  # observed variables fed to the network (1..ne)
LOOKBACK = common.LOOKBACK  # observation times per input sequence
UNITS = (256, 128, 64)  # BiLSTM, GRU and Dense widths
LOSS = "huber_loss"  # the custom loss of common.py; or "keras_huber"
METRIC = "mae"  # reported by Keras during training
EPOCHS = 100  # upper limit; early stopping (PATIENCE) may end training sooner
BATCH_SIZE = 128  # samples per gradient step
PATIENCE = 50  # early-stopping patience in epochs
DTYPE = "float64"  # network and training data precision
TRAINING = "same-trajectory"  # as published; "many-truths" generalizes to new truths
TRAIN_TRUTHS = 400  # independent truths in "many-truths" mode
PRIOR_SPREAD = (0.05, 3.0)  # prior error std range, "many-truths"; (0.01, 1) did worse
N_TEST = 5  # unseen truths the model is also evaluated on
SEED = common.SEED


def main():
    config, data, oin, rng = common.start(globals())

    with common.staged_output(config.out) as out:
        # Train, assimilate the training truth and N_TEST unseen truths, write
        rows, _, _ = common.experiment(config, data, oin, rng, out)

    common.print_table(rows, f"{config.script}: results in {config.out}")


if __name__ == "__main__":
    common.run_cli(main)
