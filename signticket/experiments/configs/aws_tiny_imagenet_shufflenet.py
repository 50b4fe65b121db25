"""AWS paper scale: Tiny-ImageNet ShuffleNet (script/tiny_shufflenet_aws.sh and _lrr.sh: SGD 0.1,
wd 5e-4, batch 128 (data/utils.py:47), 10 warm-up epochs, 15 rounds x 10 epochs at constant LR,
final 100 epochs with x0.1 at epochs 50 and 75 (optim/utils.py:10-12)). The model is the
official models/shufflenet.py ``shufflenet(num_classes=200)`` (models/utils.py:32-33). Data:
``tiny_imagenet`` (64x64; RandomResizedCrop(64, (0.5, 1)) + flip, ImageNet mean/std; the
official val split is the test set)."""

from signticket.experiments.configs.aws_common import base, final_sgd, paper_numbers, sgd


def get_config():
    c = base(
        model="shufflenet", dataset="tiny_imagenet", optimizer=sgd(0.1, 5e-4, "constant"),
        final_optimizer=final_sgd(0.1, 5e-4, 100), batch_size=128, warmup_epochs=10, rounds=15,
        epochs_per_round=10, final_epochs=100, final_rounds=(10, 13, 15), seeds=(0, 1, 2),
    )
    c.experiment.paper = paper_numbers("tiny_imagenet_shufflenet")
    return c
