"""Dense-to-sparse and dynamic sparse training with and without Sign-In at CPU scale (item 3 of
issue 17): RiGL per step and AC/DC, each ± Sign-In, BN convnet on a 4k-example Fashion-MNIST
subset, 90 % sparse, 6 epochs, 3 seeds. Params and masks are saved after epoch 1 and 6 for the
sign-alignment experiment (``signticket/experiments/sign_alignment.py``).

Scale deviations from the papers (named): RiGL updates every 8 steps (paper: 100) because an
epoch here is 32 steps; AC/DC's plan is the paper's scaled to 6 epochs (1 dense, alternating
1-epoch phases, ends compressed).
"""

from signticket.experiments.configs.sign_in_common import base


def get_config():
    c = base(
        model="convnet", model_kwargs={"channels": (16, 32, 64)}, dataset="fashion_mnist",
        train_subset=4_000, test_subset=2_000, epochs=6, lr=0.05, batch_size=128,
        reset_epochs=2, seeds=(0, 1, 2), sparsities=(0.9,),
        arms=("rigl", "rigl_sign_in", "acdc", "acdc_sign_in"), eval_every=6,
    )
    c.method.rigl_delta_t = 8
    c.experiment.hessian_batch = 128
    c.experiment.hessian_iters = 10
    c.experiment.snapshot_epochs = (1, 6)
    c.experiment.note = ("CPU scale: 4k-example train subset, 2k test examples, 6 epochs; RiGL "
                         "ΔT = 8 steps (paper 100; an epoch is 32 steps here)")
    return c
