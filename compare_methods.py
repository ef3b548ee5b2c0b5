"""Compare BiLSTM-GRU nudging with classical filters on the same unseen truths.

For every me in ME_LIST it trains the network of experiment 1 twice, once as
published ("same-trajectory": every prior of the data file against its one truth)
and once on "many-truths" pairs (short forecasts from slightly perturbed states of
TRAIN_TRUTHS independent truths), and runs the free run, stochastic EnKF, DEnKF,
EKF and classical nudging. Every method assimilates the same observations of the
training truth and of N_TEST unseen truths.

Writes into ``results/compare_methods/``: ``summary.csv`` (one row per me, method
and evaluation set: RMSE, second-half RMSE, MAE, R^2, each with its std across the
unseen truths), ``rmse_vs_me.png``, and per me a folder ``me_{me}`` with the CSVs,
metrics and plots of experiment 1 and one model folder per training mode.

Run (reduced, a few minutes on 2 cores):
    python lorenz96_bilstm_gru_sparse.py --npe 50 --data small.npz
    python compare_methods.py --data small.npz --me-list 4 20 --epochs 10 \\
        --train-truths 50 --n-test 3
Full size (about 35 minutes on 2 cores: 2 x len(ME_LIST) trainings of 100 epochs):
    python lorenz96_bilstm_gru_sparse.py && python compare_methods.py
At the defaults (seed 42) the unseen-truth RMSE at me = 4 is 9.4 for the
same-trajectory network, 4.4 for the many-truths one, 1.1 for the EnKF and 5.4 for
the free run; at me = 20, 4.7, 1.4, 0.04 and 5.4.
"""

import common

ME_LIST = (2, 4, 8, 20)  # observed-variable counts, each in 1..ne
TRAININGS = ("same-trajectory", "many-truths")  # training modes compared
LOOKBACK = common.LOOKBACK  # observation times per input sequence
UNITS = (80, 80, 80)  # BiLSTM, GRU and Dense widths
LOSS = "huber_loss"  # the custom loss of common.py; or "keras_huber"
METRIC = "mae"  # reported by Keras during training
EPOCHS = 100  # upper limit per model; early stopping may end training sooner
BATCH_SIZE = 128  # samples per gradient step
PATIENCE = 50  # early-stopping patience in epochs
DTYPE = "float32"  # network and training data precision
TRAIN_TRUTHS = 400  # independent truths in "many-truths" mode (as many as priors)
PRIOR_SPREAD = (0.05, 3.0)  # prior error std range; (0.01, 1) did worse
N_TEST = 5  # unseen truths every method is evaluated on
SEED = common.SEED


def main():
    config, data, _, rng = common.start(globals())

    with common.staged_output(config.out) as out:
        # Train both modes and run every baseline, once per observed count
        summary = common.observation_study(config, data, rng, out, config.trainings)

    # Report
    common.print_table(summary, f"{config.script}: results in {config.out}")


if __name__ == "__main__":
    common.run_cli(main)
