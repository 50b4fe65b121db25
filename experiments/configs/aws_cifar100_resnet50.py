"""AWS paper scale: CIFAR-100 ResNet-50 (SGD 0.1, wd 5e-4, batch 128, 10 warm-up epochs,
15 rounds x 10 epochs, final 100 epochs with x0.1 at 50 % and 75 %)."""

from experiments.configs.aws_common import base, sgd


def get_config():
    return base(
        model="resnet50", dataset="cifar100", optimizer=sgd(0.1, 5e-4, "constant"),
        final_optimizer=sgd(0.1, 5e-4, "step"), batch_size=128, warmup_epochs=10, rounds=15,
        epochs_per_round=10, final_epochs=100, final_rounds=(10, 13, 15), seeds=(0, 1, 2),
    )
