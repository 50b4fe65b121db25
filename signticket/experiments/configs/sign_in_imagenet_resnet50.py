"""Sign-In paper scale: ImageNet ResNet-50, random masks at 80 / 90 / 95 % with and without
Sign-In, streamed through tf.data (RandomResizedCrop 224 + flip; evaluation resize 256 + center
crop 224).

The paper's ImageNet recipe is not accessible here (docs/protocols/sign_in.md); ours, all
*unverified*: SGD lr 0.1, momentum 0.9, wd 1e-4, 5 linear warm-up epochs then cosine, 100
epochs, batch 256, scaling reset every 2 epochs, uniform random masks (stem at most 80 %
sparse, head dense). One seed (ImageNet rows are single runs). Mixed precision:
``--config.model.compute_dtype=bfloat16``.

Paper numbers (random -> + Sign-In, top-1 %): 73.87 -> 74.12, 71.56 -> 72.19, 68.72 -> 69.38 at
80 / 90 / 95 %; source: the protocol card's table "Paper numbers" (the same group's HAM README,
a secondary source; the paper's own table could not be read in this environment).
"""

from ml_collections import ConfigDict

from signticket.experiments.configs.sign_in_common import base

PAPER = {"random": {"80": 73.87, "90": 71.56, "95": 68.72},
         "sign_in": {"80": 74.12, "90": 72.19, "95": 69.38}}


def imagenet(arms: tuple[str, ...], paper: dict) -> ConfigDict:
    """The shared ImageNet ResNet-50 recipe of both Sign-In ImageNet tables."""
    c = base(
        model="resnet50", dataset="imagenet2012", epochs=100, lr=0.1, weight_decay=1e-4,
        batch_size=256, reset_epochs=2, seeds=(0,), sparsities=(0.8, 0.9, 0.95), arms=arms,
        paper=paper, eval_every=5,
    )
    c.optimizer.warmup_epochs = 5
    c.data.image_size = 224
    c.experiment.note = ("ImageNet recipe ours (unverified): SGD 0.1, 5 warm-up epochs + cosine, "
                         "100 epochs, batch 256")
    return c


def get_config():
    return imagenet(("random", "sign_in"), PAPER)
