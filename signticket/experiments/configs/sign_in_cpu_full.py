"""Sign-In at the issue's CPU scale: BN ResNet-20 (width 1) on a 10k-example Fashion-MNIST
subset, 20 epochs, SGD momentum 0.9, cosine, wd 5e-4; every arm incl. RiGL; 80/90/95 %;
3 seeds. Hours on a shared 2-core machine; minutes on a GPU."""

from signticket.experiments.configs.sign_in_common import ALL_ARMS, base


def get_config():
    c = base(
        model="resnet20", dataset="fashion_mnist", train_subset=10_000, epochs=20, lr=0.05,
        reset_epochs=2, seeds=(0, 1, 2), sparsities=(0.8, 0.9, 0.95), arms=ALL_ARMS,
    )
    c.experiment.note = "CPU scale per the issue: 10k-example train subset, 20 epochs"
    return c
