"""Experiment 5, observation configuration study: one model per observed count.

For every me in ME_LIST (observed variables freq*i - 1, freq = ne // me, at the
shared observation interval NF) it trains the network of experiment 1 and
assimilates, like experiment 1, on the training truth and N_TEST unseen truths.

Writes into ``results/da_bilstm_gru_5_sparse/``: one subfolder ``me_{me}`` per
count with the files of experiment 1, plus ``summary.csv`` (every method and
evaluation set for every me) and ``rmse_vs_me.png`` (RMSE against me).

Run: ``python lorenz96_bilstm_gru_sparse.py`` then ``python da_bilstm_gru_5_sparse.py``
(``--help`` lists every hyperparameter; e.g. ``--me-list 2 4 --epochs 5``). It trains
len(ME_LIST) models, so it takes that many times as long as experiment 1.
"""

import common

ME_LIST = (2, 4, 8, 20)  # observed-variable counts, each in 1..ne
LOOKBACK = common.LOOKBACK  # observation times per input sequence
UNITS = (80, 80, 80)  # BiLSTM, GRU and Dense widths
LOSS = "huber_loss"  # the custom loss of common.py; or "keras_huber"
METRIC = "mae"  # reported by Keras during training
EPOCHS = 100  # upper limit per model; early stopping may end training sooner
BATCH_SIZE = 128  # samples per gradient step
PATIENCE = 50  # early-stopping patience in epochs
DTYPE = "float32"  # network and training data precision
TRAINING = "same-trajectory"  # as published; "many-truths" generalizes to new truths
TRAIN_TRUTHS = 400  # independent truths in "many-truths" mode
PRIOR_SPREAD = (0.05, 3.0)  # prior error std range, "many-truths"; (0.01, 1) did worse
N_TEST = 5  # unseen truths every model is also evaluated on
SEED = common.SEED


def main():
    config, data, _, rng = common.start(globals())

    with common.staged_output(config.out) as out:
        # Train and assimilate once per observed count; summary table and plot
        summary = common.observation_study(config, data, rng, out, [config.training])

    # Report
    common.print_table(summary, f"{config.script}: results in {config.out}")


if __name__ == "__main__":
    common.run_cli(main)
