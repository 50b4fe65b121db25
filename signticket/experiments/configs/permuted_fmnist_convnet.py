"""CPU scale: the small BN convnet (16-32-64) on offline Fashion-MNIST (much slower than the MLP;
shrink with --config.data.train_subset=20000 on a laptop)."""

from signticket.experiments.configs.permuted_common import base, imp_ft_sgd, sgd


def get_config():
    return base(
        model="convnet", model_kwargs={"channels": (16, 32, 64)}, dataset="fashion_mnist",
        optimizer=sgd(0.05, 5e-4), dense_epochs=5, rewind_epochs=(1, 2),
        ft_optimizer=imp_ft_sgd(0.01, 1), ft_epochs=1, sparse_optimizer=sgd(0.05, 5e-4),
        sparsities=(0.95, 0.98), seeds=(0, 1, 2),
    )
