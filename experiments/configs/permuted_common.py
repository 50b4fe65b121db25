"""Shared shape of the permuted-mask experiment configs (Adnan et al., ICML 2025)."""

from ml_collections import ConfigDict


def sgd(lr: float, wd: float, schedule: str = "cosine") -> ConfigDict:
    return ConfigDict({
        "name": "sgd", "learning_rate": lr, "momentum": 0.9, "weight_decay": wd,
        "schedule": schedule, "warmup_epochs": 0, "milestones": (0.5, 0.75), "gamma": 0.1,
    })


def base(*, model: str, dataset: str, optimizer: ConfigDict, dense_epochs: int,
         rewind_epochs, ft_optimizer: ConfigDict, ft_epochs: int, sparse_optimizer: ConfigDict,
         sparsities, seeds, batch_size: int = 128, model_kwargs=None, train_subset: int = 0,
         matching: str = "weight", imp_mode: str = "ft", paper_key: str = "") -> ConfigDict:
    c = ConfigDict()
    c.model = ConfigDict({"name": model, "kwargs": ConfigDict(model_kwargs or {})})
    c.data = ConfigDict({"name": dataset, "train_subset": train_subset, "test_subset": 0})
    c.optimizer = optimizer  # dense A and B
    c.batch_size = batch_size
    c.eval_every = 1
    c.checkpoint_every = 1
    c.dense_epochs = dense_epochs
    # Rewind points k: sparse runs start from the weights after exactly k epochs and train
    # the remaining dense_epochs - k epochs.
    c.rewind_epochs = tuple(rewind_epochs)
    c.imp = ConfigDict({
        "mode": imp_mode,  # "ft": prune then fine-tune (the paper's IMP-FT); "rewind": LTH IMP
        "fraction": 0.2,
        "ft_epochs": ft_epochs,
        "ft_optimizer": ft_optimizer,
        "rewind_epoch": min(rewind_epochs),  # used by mode "rewind"
    })
    c.sparse = ConfigDict({"optimizer": sparse_optimizer})
    c.matching = ConfigDict({
        "method": matching,  # "weight" (Git Re-Basin) or "activation" (the paper's code)
        "max_iter": 100,  # weight matching sweeps
        "batches": 20,  # activation matching: training batches (eval mode, no augmentation)
        "batch_size": 250,
    })
    c.experiment = ConfigDict({
        "seeds": tuple(seeds),
        "seed_b_offset": 1000,  # init B = seed + offset (also its data order)
        "control_seed_offset": 2000,  # the random-permutation control
        "sparsities": tuple(sparsities),
        "methods": ("lth", "naive", "permuted", "random"),
        "barrier_points": 11,
        "bn_batches": 10,
        "barrier_batch_size": 500,
        # Row key into experiments/paper_numbers/permuted_masks.json ("" = no paper numbers).
        "paper_key": paper_key,
    })
    return c
