"""Quickstart stage 3 — Sign-In at CPU-minute scale: BN convnet on a 4k-example Fashion-MNIST
subset, 90 % random mask, 4 epochs, random-mask baseline vs + Sign-In (reset every 2 epochs),
2 seeds (the fuller table: ``sign_in_cpu.py``), with the single-neuron mechanism demonstration
(``signticket/experiments/single_neuron.py``, Thm 5.1 / 5.2 / 5.4 of the paper) above the table."""

from signticket.experiments.configs.sign_in_common import base


def get_config():
    c = base(
        model="convnet", model_kwargs={"channels": (16, 32, 64)}, dataset="fashion_mnist",
        train_subset=4_000, test_subset=2_000, epochs=4, lr=0.05, batch_size=128,
        reset_epochs=2, seeds=(0, 1), sparsities=(0.9,), arms=("random", "sign_in"),
        eval_every=4,
    )
    c.experiment.hessian_batch = 128
    c.experiment.hessian_iters = 10
    # Runs of seconds: save each run's last epoch only (a kill loses at most 30 s; the resumed
    # run is unchanged). Every epoch's save cost ~0.1 s of CPU stolen from the next epoch.
    c.checkpoint_min_interval_s = 30.0
    c.experiment.note = "quickstart scale: 4k-example subset, 4 epochs, 2 seeds"
    # The single-neuron mechanism demonstration (experiments.single_neuron, seconds) is shown
    # above the table: a newcomer sees what Sign-In does, not only a small-scale Δ.
    c.experiment.single_neuron = True
    return c
