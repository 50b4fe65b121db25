"""Shared shape of AWS experiment configs (every value's source: ``docs/protocols/aws.md``)."""

import json
from pathlib import Path

from ml_collections import ConfigDict

#: The paper's numbers per config (``source`` and ``rounds``; format in its ``_source``).
PAPER_NUMBERS = Path(__file__).parent.parent / "paper_numbers" / "aws.json"


def paper_numbers(key: str) -> ConfigDict:
    """``{"source": where they come from, "rounds": {k: numbers}}`` of ``key`` in
    ``paper_numbers/aws.json`` (a ``KeyError`` for a key it does not have)."""
    entry = json.loads(PAPER_NUMBERS.read_text())[key]
    return ConfigDict({"source": entry["source"], "rounds": entry["rounds"]})


def official_milestones(epochs: int) -> tuple[float, float]:
    """The official ``MultiStepLR(milestones=[epochs // 2, epochs // 4 * 3])`` as fractions of
    the run (``optim/utils.py``), so the drops land on the same epochs at every length."""
    return (epochs // 2 / epochs, epochs // 4 * 3 / epochs)


def sgd(lr: float, wd: float, schedule: str, milestones=(0.5, 0.75),
        eta_min_ratio: float = 0.0) -> ConfigDict:
    c = ConfigDict({
        "name": "sgd", "learning_rate": lr, "momentum": 0.9, "weight_decay": wd,
        "schedule": schedule, "warmup_epochs": 0, "milestones": tuple(milestones), "gamma": 0.1,
    })
    if eta_min_ratio:
        c.eta_min_ratio = eta_min_ratio
    return c


def adam(lr: float, wd: float, schedule: str, eta_min_ratio: float = 0.0) -> ConfigDict:
    c = ConfigDict({
        "name": "adam", "learning_rate": lr, "weight_decay": wd, "schedule": schedule,
        "warmup_epochs": 0, "milestones": (0.5, 0.75), "gamma": 0.1,
    })
    if eta_min_ratio:
        c.eta_min_ratio = eta_min_ratio
    return c


def final_sgd(lr: float, wd: float, epochs: int) -> ConfigDict:
    """The official final-run optimizer on CIFAR: SGD(momentum 0.9, wd) with MultiStepLR."""
    return sgd(lr, wd, "step", official_milestones(epochs))


def base(*, model: str, dataset: str, train_subset: int = 0, optimizer: ConfigDict,
         final_optimizer: ConfigDict, batch_size: int, warmup_epochs: int, rounds: int,
         epochs_per_round: int, final_epochs: int, final_rounds, seeds, model_kwargs=None,
         mode: str = "constant") -> ConfigDict:
    c = ConfigDict()
    c.seed = 0
    c.data_seed = 0
    c.model = ConfigDict({"name": model, "kwargs": ConfigDict(model_kwargs or {})})
    c.data = ConfigDict({"name": dataset, "train_subset": train_subset, "test_subset": 0})
    c.optimizer = optimizer  # pruning stage (warm-up and rounds)
    c.batch_size = batch_size
    c.eval_every = 1
    c.checkpoint_every = 1
    c.aws = False  # set per arm by the experiment
    c.imp = ConfigDict({
        "mode": mode, "warmup_epochs": warmup_epochs, "rounds": rounds,
        "epochs_per_round": epochs_per_round, "fraction": 0.2, "scope": "global",
        "rewind_epoch": 0,
        # utils/prune.py: every conv and non-classifier linear, int(n * 0.8) survivors kept
        "prunable": "kernels_except_head", "count_rule": "official_aws",
    })
    c.final = ConfigDict({"epochs": final_epochs, "optimizer": final_optimizer})
    c.experiment = ConfigDict({
        "seeds": tuple(seeds),
        "final_rounds": tuple(final_rounds),
        "transfer_seeds": (1000, 2000),  # offsets added to the seed: init and data order
        "dense_seed": 3000,
        "barrier_points": 11,  # calculate_error_barrier.py: alpha = 0, 0.1, ..., 1
        # calculate_error_barrier.py: BN statistics from one train-mode pass over the
        # (augmented) training loader, starting from a fresh model's, momentum updates
        "bn_mode": "ema",
        "bn_batches": 0,  # 0 = the whole training set
        "bn_batch_size": batch_size,
        "barrier_batch_size": 500,  # test-set evaluation batch (no effect on the numbers)
        "barrier_definition": "midpoint_mean",  # max_alpha err(alpha) - (err(0) + err(1)) / 2
        "paper": ConfigDict(),  # the paper's numbers for this table, where it has them
    })
    return c
