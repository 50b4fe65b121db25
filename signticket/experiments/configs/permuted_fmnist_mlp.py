"""CPU scale: MLP 784-128-128-128-10 on offline Fashion-MNIST (about 15 min per seed on 2 cores)."""

from signticket.experiments.configs.permuted_common import base, imp_ft_sgd, sgd


def get_config():
    return base(
        model="mlp", model_kwargs={"widths": (128, 128, 128)}, dataset="fashion_mnist",
        optimizer=sgd(0.05, 5e-4), dense_epochs=5, rewind_epochs=(1, 2),
        ft_optimizer=imp_ft_sgd(0.01, 1), ft_epochs=1, sparse_optimizer=sgd(0.05, 5e-4),
        sparsities=(0.95, 0.98), seeds=(0, 1, 2),
        lockstep=4,  # one MLP run leaves the cores idle (docs/performance.md)
    )
