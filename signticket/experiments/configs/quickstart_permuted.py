"""Quickstart stage 2 — permuted LTH masks at CPU-minute scale: MLP 784-128-128-128-10 on a
20k-example Fashion-MNIST subset, dense 4 epochs, IMP-FT to 90 % sparsity, sparse runs from
k = 1, weight matching, one seed (the full table: ``permuted_fmnist_mlp.py``)."""

from signticket.experiments.configs.permuted_common import base, imp_ft_sgd, sgd


def get_config():
    c = base(
        model="mlp", model_kwargs={"widths": (128, 128, 128)}, dataset="fashion_mnist",
        train_subset=20_000, optimizer=sgd(0.05, 5e-4), dense_epochs=4, rewind_epochs=(1,),
        ft_optimizer=imp_ft_sgd(0.01, 1), ft_epochs=1, sparse_optimizer=sgd(0.05, 5e-4),
        sparsities=(0.9,), seeds=(0,), matching="weight",
        lockstep=4,  # one MLP run leaves the cores idle (docs/performance.md)
    )
    c.data.test_subset = 5_000
    # Runs of seconds: save each run's last epoch only (a kill loses at most 30 s; the resumed
    # run is unchanged). Every epoch's save cost ~0.1 s of CPU stolen from the next epoch.
    c.checkpoint_min_interval_s = 30.0
    return c
