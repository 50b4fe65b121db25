"""Composed methods (``signticket/experiments/composed.py``) at CPU scale: BN convnet 16/32/64 on a
5k-example offline Fashion-MNIST subset (full 10k test set), one sparsity (90 %), 3 seeds.

Reduced scale, far below every paper's: AWS prunes with constant LR for 1 warm-up epoch + 8
rounds x 1 epoch at 25 % per round (0.75^8 = 10.0 % remaining, so both groups sit at 90 %
sparsity; round 8 is trained under its 10 % mask, and its mask and signs are the ticket) and
trains its tickets 5 epochs; the permuted-mask pipeline trains dense A and B 4
epochs, cuts A's IMP-FT mask (25 % per round, 1 fine-tuning epoch) at 90 %, rewinds to k = 1
and trains the sparse runs the remaining 3 epochs; Sign-In resets its scaling every epoch.
Accuracies are evaluated once, at the end of each run. 3 seeds x 28 runs (171 epochs):
measured 36 min wall and ~25 CPU-minutes on the 2 cores shared with other jobs (load 5-8),
i.e. ~25 min with one core to itself.
"""

from ml_collections import ConfigDict

from signticket.experiments.configs.aws_common import sgd as aws_sgd
from signticket.experiments.configs.permuted_common import sgd as pm_sgd

#: The arms run by default (``signticket.experiments.composed.ARMS`` lists them all).
DEFAULT_ARMS = ("aws_st", "aws_st_sign_in", "lth", "naive", "naive_signs", "permuted",
                "permuted_sign_in", "permuted_signs", "permuted_signs_sign_in")


def base(*, model: str, model_kwargs: dict, dataset: str, train_subset: int, test_subset: int,
         batch_size: int, seeds, arms=DEFAULT_ARMS, lr: float = 0.05, wd: float = 5e-4,
         aws_warmup: int = 1, aws_rounds: int = 8, aws_final_epochs: int = 5,
         dense_epochs: int = 4, rewind_epoch: int = 1, fraction: float = 0.25,
         sparsity: float = 0.9, reset_epochs: int = 1) -> ConfigDict:
    c = ConfigDict()
    c.model = ConfigDict({"name": model, "kwargs": ConfigDict(model_kwargs)})
    c.data = ConfigDict({"name": dataset, "train_subset": train_subset,
                         "test_subset": test_subset})
    c.batch_size = batch_size
    c.eval_every = 1000  # test accuracy once, at the end of every run (fit always evaluates it)
    c.checkpoint_every = 1
    # Sign-In arms (signticket.experiments.sign_in.make_tx over the arm's SGD and schedule).
    c.sign_in = ConfigDict({"c": 1.0, "reset_epochs": reset_epochs, "reset_momentum": True,
                            "mw_decay_scale": 1.0})
    # Composition 1: the AWS pruning stage (lottery.imp, aws=True); the ticket is the last
    # round's mask and the signs of the weights trained under it, transferred to the init
    # seed + transfer_seed.
    c.aws = ConfigDict({
        "optimizer": aws_sgd(lr, wd, "constant"),
        "imp": ConfigDict({"mode": "constant", "warmup_epochs": aws_warmup,
                           "rounds": aws_rounds, "epochs_per_round": 1, "fraction": fraction,
                           "scope": "global", "rewind_epoch": 0}),
        "final": ConfigDict({"epochs": aws_final_epochs, "optimizer": aws_sgd(lr, wd, "step")}),
        "transfer_seed": 1000,
    })
    # Compositions 2 and 3: the permuted-mask procedure (signticket.rebasin.procedure).
    c.permuted = ConfigDict({
        "optimizer": pm_sgd(lr, wd),  # dense A and B
        "dense_epochs": dense_epochs,
        "rewind_epoch": rewind_epoch,  # k: sparse runs start from the weights after k epochs
        "imp": ConfigDict({"mode": "ft", "fraction": fraction, "ft_epochs": 1,
                           "ft_optimizer": pm_sgd(0.01, wd), "rewind_epoch": rewind_epoch}),
        "sparse": ConfigDict({"optimizer": pm_sgd(lr, wd)}),
        "matching": ConfigDict({"method": "weight", "max_iter": 100, "batches": 20,
                                "batch_size": 250}),
        "sparsity": sparsity,
        "seed_b_offset": 1000,  # init B = seed + offset (also its data order)
    })
    c.experiment = ConfigDict({"seeds": tuple(seeds), "arms": tuple(arms)})
    return c


def get_config() -> ConfigDict:
    return base(model="convnet", model_kwargs={"channels": (16, 32, 64)},
                dataset="fashion_mnist", train_subset=5_000, test_subset=0, batch_size=128,
                seeds=(0, 1, 2))
