"""Composed methods, smoke-test scale (~2 CPU-minutes): every arm of ``composed_cpu.py`` on a
1k-example Fashion-MNIST subset (1k test examples), 1 seed, 2 AWS rounds and 1-2 epochs per
run, 50 % sparsity. Checks the pipeline end to end on real data; the numbers mean nothing."""

from ml_collections import ConfigDict

from signticket.experiments.configs.composed_cpu import base


def get_config() -> ConfigDict:
    return base(model="convnet", model_kwargs={"channels": (8, 16, 32)},
                dataset="fashion_mnist", train_subset=1_024, test_subset=1_000, batch_size=128,
                seeds=(0,), aws_warmup=1, aws_rounds=2, aws_final_epochs=1, dense_epochs=2,
                rewind_epoch=1, fraction=0.25, sparsity=0.5)
