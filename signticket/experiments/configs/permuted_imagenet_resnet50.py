"""Permuted masks paper scale: ImageNet ResNet-50, as sparse-rebasin's ``resnet50_src/``
scripts (docs/protocols/permuted_masks.md, section "ImageNet ResNet-50", gives the source line
of every value).

* Dense A and B (``resnet50_dense_training.py``): 90 epochs, batch 256, SGD momentum 0.9, wd
  1e-4, lr ``set_lr(epoch + 1) / 10`` with ``--lr 0.4``: 5 warm-up epochs to 0.04, then 0.04,
  x0.1 after epoch 30 and after epoch 61 (``ep // 31`` with 1-based ``ep``); RandomResizedCrop
  224 + flip, evaluation resize 256 + center crop 224 (streamed through tf.data).
* IMP-FT on A (``resnet50_imp.py``): from the final dense weights, prune 20 % of the survivors
  of every conv / fc kernel but the projection shortcuts (global magnitude), fine-tune 20 epochs
  per level at a constant lr 0.002 (``set_lr`` returns 0.02, divided by 10) with momentum 0.9
  and wd 1e-4 (the argparse defaults), a fresh optimizer per level.
* Matching (``resnet50_w2_matching.py``): activation matching of the dense final weights over
  the first 100 batches of 256 of the augmented training loader, BN in eval mode, each residual
  stream at one site (``get_permk``: the stem, then the last block of every stage).
* Sparse runs (``sparse_training_*_multigpu.py``): from the official rewind point k (``model_{k}
  .pth``, the weights after k + 1 epochs), the dense schedule restarted; the milestones are
  fractions of the sparse stage so that they fall after its epochs 30 and 61, as the official
  absolute ones (``sparse.optimizer.milestones``: recompute them if you change k).

Model: ``resnet50_wide`` (``resnet50_src/resnet_torchvision.py`` 417: stem 128, bottleneck
inner widths x4, outputs x2, ~271M parameters): the sparse-training and matching scripts load
it (their checkpoints live under ``wide_resnet50_cp``); the dense and IMP scripts build it with
``--width 2`` (their default ``--width 1`` is torchvision's ResNet-50, our ``resnet50``).

Deviations (named in the protocol card): the sparse runs train ``90 - k`` epochs (official ``89
- k``); warm-up is linear per step from 0 (official: per-epoch steps from 0.0078); the IMP
targets are cut exactly at 80 / 90 / 95 % (the official levels 7 / 10 / 13 are 83.2 / 91.4 /
95.0 %). The paper's rewind point for its ImageNet rows could not be read here (the script
accepts 0, 10, 25, 50); k = 10 is ours.

Paper numbers: the ImageNet table of Adnan et al. (arXiv 2505.05143) is not readable in this
environment (the stored copies give only the paper's opening), so ``experiment.paper_key`` is
empty; no number is filled in.

Mixed precision: ``--config.model.compute_dtype=bfloat16``.
"""

from ml_collections import ConfigDict

from signticket.experiments.configs.permuted_common import base, sgd

DENSE_EPOCHS = 90
REWIND = 10  # official convention: the weights after k + 1 = 11 epochs


def step_sgd(lr: float, epochs: int) -> ConfigDict:
    """The official ImageNet schedule over a stage of ``epochs``: 5 warm-up epochs, x0.1 after
    epoch 30 and after epoch 61 of the stage (``set_lr``'s ``ep // 31``)."""
    o = sgd(lr, 1e-4, schedule="step")
    o.warmup_epochs = 5
    o.milestones = (30 / epochs, 61 / epochs)
    return o


def get_config():
    ft = sgd(0.002, 1e-4, schedule="constant")  # momentum 0.9 (argparse default)
    c = base(
        model="resnet50_wide", dataset="imagenet2012", optimizer=step_sgd(0.04, DENSE_EPOCHS),
        dense_epochs=DENSE_EPOCHS, rewind_epochs=(REWIND,), ft_optimizer=ft, ft_epochs=20,
        sparse_optimizer=step_sgd(0.04, DENSE_EPOCHS - REWIND),
        sparsities=(0.8, 0.9, 0.95), seeds=(0,), batch_size=256, matching="activation",
        rewind_convention="official",
    )
    c.data.image_size = 224
    c.matching.batches = 100
    c.matching.stream_sites = "last"
    return c
