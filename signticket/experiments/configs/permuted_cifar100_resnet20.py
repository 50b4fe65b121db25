"""Paper scale: CIFAR-100 ResNet-20 x width, same recipe as CIFAR-10."""

from signticket.experiments.configs.permuted_cifar10_resnet20 import get_config as _cifar10


def get_config(width: int = 1):
    return _cifar10(width=width, dataset="cifar100")
