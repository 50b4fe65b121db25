"""Every AWS paper-scale config carries the official script's values, and its paper numbers
come with their source.

``OFFICIAL`` is transcribed from the official repository (JungHunOh/AWS_ICLR2025):
``script/<dataset>_<arch>_{aws,lrr}.sh`` (lr, wd, warm_up, epochs per round, pruning_iters,
ft_epochs; the AWS and LRR scripts of a pair have the same values), ``data/utils.py``
(batch: 128 on CIFAR-100 / Tiny-ImageNet, 256 on ImageNet, 512 for the ImageNet MLP-Mixer,
lines 24, 47, 70-73), ``optim/utils.py:3-12`` (ImageNet: SGD for MobileNetV2, Adam
otherwise, cosine to lr * 0.001; CIFAR-100 / Tiny-ImageNet: SGD, x0.1 at epochs // 2 and
epochs // 4 * 3) and ``models/utils.py:8-43`` (architecture per dataset)."""

import json

import pytest

from signticket.experiments import aws, suite
from signticket.experiments.configs import aws_common

# config -> (model, dataset, optimizer, lr, wd, batch, warm-up, rounds, epochs/round, final)
OFFICIAL = {
    "aws_cifar100_resnet50": ("resnet50_cifar", "cifar100", "sgd", 0.1, 5e-4, 128, 10, 15, 10,
                              100),
    "aws_cifar100_mobilenetv2": ("mobilenet_v2", "cifar100", "sgd", 0.05, 5e-4, 128, 10, 15, 10,
                                 100),
    "aws_cifar100_efficientnet": ("efficientnet_b0", "cifar100", "sgd", 0.1, 5e-4, 128, 10, 15,
                                  10, 100),
    "aws_cifar100_shufflenet": ("shufflenet", "cifar100", "sgd", 0.1, 5e-4, 128, 10, 15, 10,
                                100),
    "aws_tiny_imagenet_resnet50": ("resnet50_cifar", "tiny_imagenet", "sgd", 0.1, 5e-4, 128,
                                   10, 15, 10, 100),
    "aws_tiny_imagenet_mobilenetv2": ("mobilenet_v2", "tiny_imagenet", "sgd", 0.05, 5e-4, 128,
                                      10, 15, 10, 100),
    "aws_tiny_imagenet_efficientnet": ("efficientnet_b0", "tiny_imagenet", "sgd", 0.1, 5e-4,
                                       128, 10, 15, 10, 100),
    "aws_tiny_imagenet_shufflenet": ("shufflenet", "tiny_imagenet", "sgd", 0.1, 5e-4, 128, 10,
                                     15, 10, 100),
    "aws_imagenet_resnet50": ("resnet50", "imagenet2012", "adam", 1e-3, 1e-5, 256, 20, 10, 5,
                              100),
    "aws_imagenet_mobilenetv2": ("mobilenet_v2_imagenet", "imagenet2012", "sgd", 0.05, 5e-5,
                                 256, 20, 10, 5, 100),
    "aws_imagenet_mlpmixer": ("mlp_mixer", "imagenet2012", "adam", 1e-3, 5e-5, 512, 20, 10, 5,
                              100),
}


def _config(name):
    return suite.load_config(suite.CONFIG_DIR / f"{name}.py")


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_config_has_the_official_script_values(name):
    model, dataset, opt, lr, wd, batch, warmup, rounds, per_round, final = OFFICIAL[name]
    c = _config(name)
    assert (c.model.name, c.data.name, c.batch_size) == (model, dataset, batch)
    assert (c.imp.warmup_epochs, c.imp.rounds, c.imp.epochs_per_round) == (
        warmup, rounds, per_round)
    assert (c.imp.fraction, c.imp.count_rule, c.imp.mode) == (0.2, "official_aws", "constant")
    assert c.final.epochs == final
    # train.py:130-131: the pruning stage never steps its scheduler.
    assert (c.optimizer.name, c.optimizer.schedule) == (opt, "constant")
    for o in (c.optimizer, c.final.optimizer):
        assert (o.name, o.learning_rate, o.weight_decay) == (opt, lr, wd)
        if opt == "sgd":
            assert o.momentum == 0.9
    f = c.final.optimizer
    if dataset == "imagenet2012":
        assert (f.schedule, f.eta_min_ratio) == ("torch_cosine", 1e-3)
        assert c.data.image_size == 224
    else:
        assert f.schedule == "step" and f.gamma == 0.1
        assert tuple(round(m * final) for m in f.milestones) == (final // 2, final // 4 * 3)


def test_mlp_mixer_is_the_official_size():
    kwargs = _config("aws_imagenet_mlpmixer").model.kwargs.to_dict()
    assert kwargs == {"image_size": 224, "patch_size": 16, "dim": 512, "depth": 12}


def test_paper_numbers_have_a_source_and_the_table_format():
    """Every AWS config has its entry; numbers (where present) sit at rounds the config
    runs, under keys the table knows (``aws.COLUMNS`` / ``aws.PAPER_BARRIERS``)."""
    entries = json.loads(aws_common.PAPER_NUMBERS.read_text())
    method_keys = {k for _, m, k in aws.COLUMNS if m} | {k for _, k in aws.PAPER_BARRIERS}
    for name in OFFICIAL:
        c = _config(name)
        paper = c.experiment.paper
        assert paper.source.strip()
        assert paper.to_dict() == aws_common.paper_numbers(name.removeprefix("aws_")).to_dict()
        for k, ref in paper.rounds.items():
            assert int(k) in c.experiment.final_rounds
            for key, value in ref.items():
                if key == "dense":
                    assert 0 < value < 100
                else:
                    assert key in aws.METHODS and set(value) <= method_keys
    assert set(entries) - {"_source", "_status"} == {n.removeprefix("aws_") for n in OFFICIAL}
