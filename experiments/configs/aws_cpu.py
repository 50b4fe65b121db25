"""AWS at CPU scale: BN convnet on a 20k-example Fashion-MNIST subset (offline)."""

from experiments.configs.aws_common import base, sgd


def get_config():
    return base(
        model="convnet", model_kwargs={"channels": (16, 32, 64)}, dataset="fashion_mnist",
        train_subset=20_000, optimizer=sgd(0.05, 5e-4, "constant"),
        final_optimizer=sgd(0.05, 5e-4, "step"), batch_size=128, warmup_epochs=3, rounds=13,
        epochs_per_round=2, final_epochs=10, final_rounds=(10, 13), seeds=(0, 1),
    )
