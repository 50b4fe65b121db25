"""Sign-In at CPU scale, the quick default: BN convnet on a 4k-example Fashion-MNIST subset,
6 epochs, 90/95 % random masks, 3 seeds; 18 runs, 17.6 CPU-minutes (33 min wall measured on 2
cores shared with three other jobs).

Reduced from the issue's CPU scale (10-20k examples, 20 epochs, all arms; see
``sign_in_cpu_full.py``) to fit the time budget: fewer examples and epochs, 2k test examples,
scaling reset every 2 epochs, and the arms baseline / Sign-In / Sign-In without resets. Add
arms with ``--config.experiment.arms="('random','sign_in','sign_in_no_reset',
'sign_in_half_decay')"``: finished runs are reused.
"""

from signticket.experiments.configs.sign_in_common import base


def get_config():
    c = base(
        model="convnet", model_kwargs={"channels": (16, 32, 64)}, dataset="fashion_mnist",
        train_subset=4_000, test_subset=2_000, epochs=6, lr=0.05, batch_size=128,
        reset_epochs=2, seeds=(0, 1, 2), sparsities=(0.9, 0.95),
        arms=("random", "sign_in", "sign_in_no_reset"), eval_every=6,
    )
    c.experiment.hessian_batch = 128
    c.experiment.hessian_iters = 10
    c.experiment.note = ("CPU quick scale: 4k-example train subset, 2k test examples, 6 epochs "
                         "(reduced from the issue's 10-20k / 20 epochs to fit ~20 CPU minutes)")
    return c
