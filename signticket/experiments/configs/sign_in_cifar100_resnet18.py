"""Sign-In paper scale: CIFAR-100 ResNet-18, random masks at 80/90/95 %, 3 seeds.

The paper's full training recipe is not public; we use SGD 0.1, momentum 0.9, wd 5e-4, cosine,
200 epochs, batch 128, scaling reset every 2 epochs. Paper numbers (random -> + Sign-In). The
paper's RiGL / RiGL + Sign-In numbers (75.02/73.70/71.89 -> 75.02/74.27/73.07 at 80/90/95 %)
are listed next to its ImageNet ResNet-50 results, so they are not attached to this table."""

from signticket.experiments.configs.sign_in_common import base


def get_config():
    return base(
        model="resnet18", dataset="cifar100", epochs=200, lr=0.1, reset_epochs=2,
        seeds=(0, 1, 2), sparsities=(0.8, 0.9, 0.95),
        arms=("random", "sign_in", "sign_in_no_reset", "rigl", "rigl_sign_in"),
        paper={"random": {"80": 73.95, "90": 72.96, "95": 71.36},
               "sign_in": {"80": 75.32, "90": 73.94, "95": 72.51}},
    )
