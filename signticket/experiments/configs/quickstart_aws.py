"""Quickstart stage 1 -- AWS in about a CPU-minute: BN convnet on a 1k-example Fashion-MNIST
subset, in the official proportions (warm-up = one round, final runs = 10 rounds): 1 warm-up
epoch + 6 one-epoch IMP rounds at constant LR (0.8^6 = 26 % of the weights left), final runs of
10 epochs, one seed, barriers on 2k test examples. A smoke-scale look at the full table of
``aws_cpu.py``; its numbers are noisy.

Deliberate deviation: BN statistics along the barrier curves are the exact average over the 1k
training examples (``bn_mode="average"``), not the official momentum pass (``aws_cpu.py``): one
pass over 7 batches would leave 0.9^7 = 48 % of the fresh model's statistics in them (the
official pass over CIFAR's 391 batches leaves none)."""

from signticket.experiments.configs.aws_common import base, final_sgd, sgd


def get_config():
    c = base(
        model="convnet", model_kwargs={"channels": (16, 32, 64)}, dataset="fashion_mnist",
        train_subset=1_000, optimizer=sgd(0.05, 5e-4, "constant"),
        final_optimizer=final_sgd(0.05, 5e-4, 10), batch_size=128, warmup_epochs=1, rounds=6,
        epochs_per_round=1, final_epochs=10, final_rounds=(6,), seeds=(0,),
    )
    c.data.test_subset = 2_000
    c.experiment.bn_mode = "average"
    # Runs of seconds: save each run's last epoch only (a kill loses at most 30 s; the resumed
    # run is unchanged). Every epoch's save cost ~0.1 s of CPU stolen from the next epoch.
    c.checkpoint_min_interval_s = 30.0
    # Test accuracy at the end of each run only: the tables and figures read nothing else (a
    # run's last epoch is always evaluated, so each one-epoch IMP round still is). Evaluating
    # the 2k test examples after each of the final runs' epochs cost more than training them
    # on 1k (104 evaluations, 5 of the 22 s of a warm quickstart stage); training is unchanged.
    c.eval_every = c.final.epochs
    return c
