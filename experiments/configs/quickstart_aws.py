"""Quickstart stage 1 — AWS at a few CPU-minutes: BN convnet on a 5k-example Fashion-MNIST
subset, 1 warm-up epoch + 8 one-epoch IMP rounds (16.8 % of the weights left), final runs of
4 epochs, one seed, barriers on 2k test examples. A smoke-scale look at the full table of
``aws_cpu.py``; its numbers are noisy."""

from experiments.configs.aws_common import base, sgd


def get_config():
    c = base(
        model="convnet", model_kwargs={"channels": (16, 32, 64)}, dataset="fashion_mnist",
        train_subset=5_000, optimizer=sgd(0.05, 5e-4, "constant"),
        final_optimizer=sgd(0.05, 5e-4, "step"), batch_size=128, warmup_epochs=1, rounds=8,
        epochs_per_round=1, final_epochs=4, final_rounds=(8,), seeds=(0,),
    )
    c.data.test_subset = 2_000
    c.experiment.bn_batches = 4
    return c
