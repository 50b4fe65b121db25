"""Shared shape of the permuted-mask experiment configs (Adnan et al., ICML 2025).

Defaults follow the official code (calgaryml/sparse-rebasin); docs/protocols/permuted_masks.md
lists every choice with its source line and the test that pins it.
"""

from ml_collections import ConfigDict


def sgd(lr: float, wd: float, schedule: str = "cosine", momentum: float = 0.9) -> ConfigDict:
    """PyTorch SGD (coupled weight decay) with a schedule over the stage's epochs."""
    return ConfigDict({
        "name": "sgd", "learning_rate": lr, "momentum": momentum, "weight_decay": wd,
        "schedule": schedule, "warmup_epochs": 0, "milestones": (0.5, 0.75), "gamma": 0.1,
    })


def imp_ft_sgd(lr: float, epochs: int) -> ConfigDict:
    """IMP-FT's per-round optimizer: ``pruning.py`` line 50 builds ``SGD(params, lr=prune_lr,
    **optimizer_config.get('params', {}))`` and no shipped config has a ``params`` key, so it is
    plain SGD (no momentum, no weight decay), with a fresh ``CosineAnnealingLR(T=epochs)``
    stepped once per epoch (lines 53-55, 93). Our cosine decays per step, which is the same
    curve up to half an epoch when a round has many epochs (the paper's 50); a one-epoch round
    (the CPU configs) runs at a *constant* ``prune_lr`` there, so it is constant here too."""
    return sgd(lr, 0.0, schedule="constant" if epochs == 1 else "cosine", momentum=0.0)


def base(*, model: str, dataset: str, optimizer: ConfigDict, dense_epochs: int,
         rewind_epochs, ft_optimizer: ConfigDict, ft_epochs: int, sparse_optimizer: ConfigDict,
         sparsities, seeds, batch_size: int = 128, model_kwargs=None, train_subset: int = 0,
         matching: str = "activation", imp_mode: str = "ft",
         rewind_convention: str = "exact", paper_key: str = "", lockstep: int = 1) -> ConfigDict:
    c = ConfigDict()
    c.model = ConfigDict({"name": model, "kwargs": ConfigDict(model_kwargs or {})})
    c.data = ConfigDict({"name": dataset, "train_subset": train_subset, "test_subset": 0})
    c.optimizer = optimizer  # dense A and B
    c.batch_size = batch_size
    c.eval_every = 1
    c.checkpoint_every = 1
    c.dense_epochs = dense_epochs
    # Rewind points k. The sparse runs train dense_epochs - k epochs from the weights after
    # exactly k epochs ("exact") or, as the official --rewind k, after k + 1 ("official").
    c.rewind_epochs = tuple(rewind_epochs)
    c.rewind_convention = rewind_convention
    c.imp = ConfigDict({
        "mode": imp_mode,  # "ft": prune then fine-tune (the paper's IMP-FT); "rewind": LTH IMP
        "fraction": 0.2,
        "ft_epochs": ft_epochs,
        "ft_optimizer": ft_optimizer,
        "rewind_epoch": min(rewind_epochs),  # used by mode "rewind"
        # Official set: every conv / dense kernel, head included, projection shortcuts dense.
        "prune_scope": "sparse_rebasin",
    })
    c.sparse = ConfigDict({"optimizer": sparse_optimizer})
    c.matching = ConfigDict({
        "method": matching,  # "activation" (the paper's code) or "weight" (Git Re-Basin)
        "max_iter": 100,  # weight matching sweeps
        # Activation matching: one shuffled, augmented epoch of training batches (batches=0),
        # BN in eval mode, one site per residual stream, as act_matching_resnet20.py.
        "batches": 0,
        "batch_size": batch_size,
        "augment": True,
        "stream_sites": "sparse_rebasin",
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
        # Runs trained side by side in one program (dense A and B; a cell's sparse runs): the
        # same numbers bit for bit, faster for a model that leaves the cores idle (the MLP).
        "lockstep": lockstep,
    })
    return c
