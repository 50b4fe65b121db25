"""Paper scale: CIFAR-10 VGG-11 as sparse-rebasin's ``VGG11_nofc`` (conv biases, no BN, PyTorch
default init), the ResNet-20 recipe (the official repo ships no VGG config; its ResNet configs
differ from one only in ``model_type``), official rewind point, activation matching."""

from signticket.experiments.configs.permuted_common import base, imp_ft_sgd, sgd


def get_config():
    return base(
        model="vgg11_nofc", dataset="cifar10", optimizer=sgd(0.08, 5e-4), dense_epochs=200,
        rewind_epochs=(50,), ft_optimizer=imp_ft_sgd(0.01, 50), ft_epochs=50,
        sparse_optimizer=sgd(0.02, 5e-4), sparsities=(0.8, 0.9, 0.95, 0.97), seeds=(0, 1, 2),
        matching="activation", rewind_convention="official", paper_key="cifar10_vgg11",
    )
