"""Sign-In paper scale: CIFAR-10 ResNet-20, random masks at 80/90/95 %, 3 seeds.

The paper's full training recipe is not public; we use SGD 0.1, momentum 0.9, wd 5e-4, cosine,
160 epochs, batch 128, scaling reset every 2 epochs. Paper numbers (random -> + Sign-In)."""

from signticket.experiments.configs.sign_in_common import base


def get_config():
    return base(
        model="resnet20", dataset="cifar10", epochs=160, lr=0.1, reset_epochs=2,
        seeds=(0, 1, 2), sparsities=(0.8, 0.9, 0.95),
        arms=("random", "sign_in", "sign_in_p5", "sign_in_no_reset", "sign_in_half_decay"),
        paper={"random": {"80": 88.25, "90": 86.25, "95": 83.56},
               "sign_in": {"80": 89.37, "90": 87.83, "95": 84.74}},
    )
