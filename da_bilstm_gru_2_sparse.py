"""Experiment 2, long training: Keras's Huber loss and up to 3000 epochs.

Same network and data as experiment 1; it changes the loss to ``keras.losses.Huber``,
the reported metric to MSE and trains for up to 3000 epochs, stopped early when the
validation loss has not improved for PATIENCE epochs. ``keras.losses.Huber`` (delta
1) is the same function as the custom ``huber_loss`` of experiment 1 (a test checks
it), so the changes that matter are the longer training and the reported metric.

Writes into ``results/da_bilstm_gru_2_sparse/`` the same files as experiment 1:
``model_bilstm_gru.h5``, ``training.log``, ``t.csv``, ``tobs.csv``, ``utrue.csv``,
``uobs.csv``, ``uw.csv``, ``ulstm.csv``, ``metrics.csv``, ``config.json``, plots.

Run: ``python lorenz96_bilstm_gru_sparse.py`` then ``python da_bilstm_gru_2_sparse.py``
(``--help`` lists every hyperparameter). On 2 CPU cores an epoch takes 2-5 s, so
3000 epochs take 2-4 hours when early stopping does not end them sooner.
"""

import common

ME = common.ME  # observed variables fed to the network (1..ne)
LOOKBACK = common.LOOKBACK  # observation times per input sequence
UNITS = (80, 80, 80)  # BiLSTM, GRU and Dense widths
LOSS = "keras_huber"  # keras.losses.Huber (delta 1); or "huber_loss"
METRIC = "mse"  # reported by Keras during training
EPOCHS = 3000  # upper limit; early stopping ends the run before it
BATCH_SIZE = 128  # samples per gradient step
PATIENCE = 50  # early-stopping patience in epochs
DTYPE = "float32"  # network and training data precision
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
