"""Default dense training run: the small BN convnet on offline Fashion-MNIST."""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.seed = 0  # model init
    c.data_seed = 0  # data order and augmentation
    c.model = ConfigDict({"name": "convnet", "kwargs": ConfigDict()})
    c.data = ConfigDict({"name": "fashion_mnist", "train_subset": 0, "test_subset": 0})
    c.optimizer = ConfigDict(
        {
            "name": "sgd",
            "learning_rate": 0.05,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "schedule": "cosine",
            "warmup_epochs": 0,
            "milestones": (0.5, 0.75),
            "gamma": 0.1,
        }
    )
    c.epochs = 5
    c.batch_size = 128
    c.eval_every = 1
    c.checkpoint_every = 1
    # At most one save per this many seconds (the last epoch always): a kill loses at most that
    # long of training. Not part of the run's identity (signticket.checkpoint.UNHASHED_KEYS).
    c.checkpoint_min_interval_s = 0.0
    # Where metrics go: any of "jsonl", "tensorboard", "wandb". Not part of the run's identity
    # (signticket.checkpoint.UNHASHED_KEYS): changing it reuses the same run directory.
    c.logging = ConfigDict({"writers": ("jsonl",), "wandb_project": ""})
    # Mixed precision: --config.model.compute_dtype=bfloat16 (every config accepts the key;
    # float32, the default, is kept as its absence so existing run directories keep their hashes).
    return c
