"""Shared shape of AWS experiment configs."""

from ml_collections import ConfigDict


def sgd(lr: float, wd: float, schedule: str, milestones=(0.5, 0.75)) -> ConfigDict:
    return ConfigDict({
        "name": "sgd", "learning_rate": lr, "momentum": 0.9, "weight_decay": wd,
        "schedule": schedule, "warmup_epochs": 0, "milestones": milestones, "gamma": 0.1,
    })


def adam(lr: float, wd: float, schedule: str) -> ConfigDict:
    return ConfigDict({
        "name": "adam", "learning_rate": lr, "weight_decay": wd, "schedule": schedule,
        "warmup_epochs": 0, "milestones": (0.5, 0.75), "gamma": 0.1,
    })


def base(*, model: str, dataset: str, train_subset: int = 0, optimizer: ConfigDict,
         final_optimizer: ConfigDict, batch_size: int, warmup_epochs: int, rounds: int,
         epochs_per_round: int, final_epochs: int, final_rounds, seeds, model_kwargs=None,
         mode: str = "constant") -> ConfigDict:
    c = ConfigDict()
    c.seed = 0
    c.data_seed = 0
    c.model = ConfigDict({"name": model, "kwargs": ConfigDict(model_kwargs or {})})
    c.data = ConfigDict({"name": dataset, "train_subset": train_subset, "test_subset": 0})
    c.optimizer = optimizer  # pruning stage
    c.batch_size = batch_size
    c.eval_every = 1
    c.checkpoint_every = 1
    c.aws = False  # set per arm by the experiment
    c.imp = ConfigDict({
        "mode": mode, "warmup_epochs": warmup_epochs, "rounds": rounds,
        "epochs_per_round": epochs_per_round, "fraction": 0.2, "scope": "global",
        "rewind_epoch": 0,
    })
    c.final = ConfigDict({"epochs": final_epochs, "optimizer": final_optimizer})
    c.experiment = ConfigDict({
        "seeds": tuple(seeds),
        "final_rounds": tuple(final_rounds),
        "transfer_seeds": (1000, 2000),  # offsets added to the seed: two fresh inits
        "dense_seed": 3000,
        "barrier_points": 11,
        "bn_batches": 10,
        "barrier_batch_size": 500,
        "paper": ConfigDict(),  # the paper's numbers for this table, where it has them
    })
    return c
