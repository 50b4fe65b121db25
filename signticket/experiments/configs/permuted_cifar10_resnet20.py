"""Paper scale: CIFAR-10 ResNet-20 x width (1, 4, 8, 16 in the paper; set
--config.model.kwargs.width=4 and --config.experiment.paper_key=cifar10_resnet20x4), as the
official configs/config_<w>_<s>.yaml: sparse-rebasin's ResNet-20 (3x3 projection shortcuts),
dense 200 epochs SGD lr 0.08 momentum 0.9 wd 5e-4 cosine, IMP-FT 20 %/round with 50 epochs of
plain SGD at lr 0.01 per round, sparse lr 0.02 (momentum 0.9, wd 5e-4) for 200 - k epochs from
the official rewind point k (the checkpoint after k + 1 epochs), activation matching."""

from signticket.experiments.configs.permuted_common import base, imp_ft_sgd, sgd


def get_config(width: int = 1, dataset: str = "cifar10"):
    return base(
        model="resnet20_rebasin", model_kwargs={"width": width}, dataset=dataset,
        optimizer=sgd(0.08, 5e-4), dense_epochs=200, rewind_epochs=(50,),
        ft_optimizer=imp_ft_sgd(0.01, 50), ft_epochs=50, sparse_optimizer=sgd(0.02, 5e-4),
        sparsities=(0.8, 0.9, 0.95, 0.97), seeds=(0, 1, 2), matching="activation",
        rewind_convention="official", paper_key=f"{dataset}_resnet20x{width}",
    )
