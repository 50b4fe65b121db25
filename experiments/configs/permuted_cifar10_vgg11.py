"""Paper scale: CIFAR-10 VGG-11 (with BN), the ResNet-20 recipe, activation matching."""

from experiments.configs.permuted_common import base, sgd


def get_config():
    return base(
        model="vgg11_bn", dataset="cifar10", optimizer=sgd(0.08, 5e-4), dense_epochs=200,
        rewind_epochs=(50,), ft_optimizer=sgd(0.01, 5e-4), ft_epochs=50,
        sparse_optimizer=sgd(0.02, 5e-4), sparsities=(0.8, 0.9, 0.95, 0.97), seeds=(0, 1, 2),
        matching="activation", paper_key="cifar10_vgg11",
    )
