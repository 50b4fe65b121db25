"""AWS paper scale: CIFAR-100 MobileNetV2 (script/cifar100_mobielnetv2_aws.sh: SGD 0.05, wd 5e-4,
batch 128, 10 warm-up epochs, 15 rounds x 10 epochs at constant LR, final 100 epochs with x0.1
at epochs 50 and 75). The model is the official models/mobilenetv2.py."""

from signticket.experiments.configs.aws_common import base, final_sgd, paper_numbers, sgd


def get_config():
    c = base(
        model="mobilenet_v2", dataset="cifar100", optimizer=sgd(0.05, 5e-4, "constant"),
        final_optimizer=final_sgd(0.05, 5e-4, 100), batch_size=128, warmup_epochs=10, rounds=15,
        epochs_per_round=10, final_epochs=100, final_rounds=(10, 13, 15), seeds=(0, 1, 2),
    )
    c.experiment.paper = paper_numbers("cifar100_mobilenetv2")
    return c
