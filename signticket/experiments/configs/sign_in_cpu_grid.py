"""Sign-In at CPU scale with the paper-faithful defaults (beta = 1, reset every 2 epochs, momentum
kept, decay λ on m and w), 3 paired seeds, plus a small grid of what the paper says matters:
the reset period p (1 epoch) and beta relative to the layer's weight scale (beta = 1 x and
0.3 x the layer's RMS at init, with the step at theta = 0 normalised to SGD's). BN convnet on a
4k-example Fashion-MNIST subset, 90 % uniform random mask, 6 epochs. 15 runs.

Why the grid: with beta = 1 and kernel weights of RMS ~0.05-0.3, the preconditioner
sqrt(4 theta^2 + beta^2) is within a few percent of 1 for almost every weight, so to first order
Sign-In is SGD (with twice the decay on theta); only beta comparable to |theta| changes the
geometry (docs/protocols/sign_in.md).
"""

from signticket.experiments.configs.sign_in_common import base


def get_config():
    c = base(
        model="convnet", model_kwargs={"channels": (16, 32, 64)}, dataset="fashion_mnist",
        train_subset=4_000, test_subset=2_000, epochs=6, lr=0.05, batch_size=128,
        reset_epochs=2, seeds=(0, 1, 2), sparsities=(0.9,),
        arms=("random", "sign_in", "sign_in_p1", "sign_in_rel1", "sign_in_rel03"), eval_every=6,
    )
    c.experiment.hessian_batch = 128
    c.experiment.hessian_iters = 10
    c.experiment.note = ("CPU scale: 4k-example train subset, 2k test examples, 6 epochs, 90 % "
                         "uniform random mask (input layer capped at 80 %)")
    return c
