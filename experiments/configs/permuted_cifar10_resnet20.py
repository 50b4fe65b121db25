"""Paper scale: CIFAR-10 ResNet-20 x width (1, 4, 8, 16 in the paper; set
--config.model.kwargs.width=4 and --config.experiment.paper_key=cifar10_resnet20x4), dense 200
epochs SGD lr 0.08 cosine, IMP-FT 50 epochs/round at lr 0.01, sparse lr 0.02 for 200 - k epochs
from k = 50, activation matching (as the paper's code)."""

from experiments.configs.permuted_common import base, sgd


def get_config(width: int = 1, dataset: str = "cifar10"):
    return base(
        model="resnet20", model_kwargs={"width": width}, dataset=dataset,
        optimizer=sgd(0.08, 5e-4), dense_epochs=200, rewind_epochs=(50,),
        ft_optimizer=sgd(0.01, 5e-4), ft_epochs=50, sparse_optimizer=sgd(0.02, 5e-4),
        sparsities=(0.8, 0.9, 0.95, 0.97), seeds=(0, 1, 2), matching="activation",
        paper_key=f"{dataset}_resnet20x{width}",
    )
