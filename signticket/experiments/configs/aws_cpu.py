"""AWS at CPU scale: BN convnet on a 20k-example Fashion-MNIST subset (offline).

Official proportions (script/cifar100_resnet50_aws.sh: warm-up = one round = 10 epochs, final
runs 100 epochs = 10 rounds) at a tenth of the epochs: 1 warm-up epoch, 13 rounds x 1 epoch at
constant LR (0.8^13 = 5.5 % left), final runs 10 epochs (x0.1 at epochs 5 and 6, the official
milestone rule). 2 seeds x (2 x 14 pruning + 17 x 10 final) = 396 epochs of 20k examples.
"""

from signticket.experiments.configs.aws_common import base, final_sgd, sgd


def get_config():
    return base(
        model="convnet", model_kwargs={"channels": (16, 32, 64)}, dataset="fashion_mnist",
        train_subset=20_000, optimizer=sgd(0.05, 5e-4, "constant"),
        final_optimizer=final_sgd(0.05, 5e-4, 10), batch_size=128, warmup_epochs=1, rounds=13,
        epochs_per_round=1, final_epochs=10, final_rounds=(10, 13), seeds=(0, 1),
    )
