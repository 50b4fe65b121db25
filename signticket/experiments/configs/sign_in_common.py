"""Shared shape of Sign-In experiment configs (``signticket/experiments/sign_in.py``)."""

from ml_collections import ConfigDict

#: Arms the experiment knows (see ``signticket.experiments.sign_in.ARMS``).
ALL_ARMS = ("random", "sign_in", "sign_in_p5", "sign_in_no_reset", "sign_in_half_decay",
            "rigl", "rigl_sign_in", "acdc", "acdc_sign_in")


def base(*, model: str, dataset: str, epochs: int, seeds, sparsities, arms,
         train_subset: int = 0, test_subset: int = 0, model_kwargs=None, lr: float = 0.1,
         weight_decay: float = 5e-4, batch_size: int = 128, reset_epochs: int = 2,
         distribution: str = "uniform", paper=None, eval_every: int = 1) -> ConfigDict:
    c = ConfigDict()
    c.seed = 0  # model init and mask (set per seed by the experiment)
    c.data_seed = 0
    c.model = ConfigDict({"name": model, "kwargs": ConfigDict(model_kwargs or {})})
    c.data = ConfigDict({"name": dataset, "train_subset": train_subset,
                         "test_subset": test_subset})
    c.optimizer = ConfigDict({
        "name": "sgd", "learning_rate": lr, "momentum": 0.9, "weight_decay": weight_decay,
        "schedule": "cosine", "warmup_epochs": 0, "milestones": (0.5, 0.75), "gamma": 0.1,
    })
    c.epochs = epochs
    c.batch_size = batch_size
    c.eval_every = eval_every
    c.checkpoint_every = 1
    # Random mask: every prunable layer at ``sparsity`` (uniform, exact overall count), except
    # the ``capped`` input layers, kept at most ``max_capped_sparsity`` sparse; the head is
    # dense. Or ERK.
    c.mask = ConfigDict({
        "sparsity": 0.9, "distribution": distribution, "max_capped_sparsity": 0.8,
        "capped": ("conv0/kernel", "stem_conv/kernel", "fc0/kernel"),
    })
    # What the arm does (filled in per arm by the experiment; fields an arm does not use are
    # None so they do not split its run directory).
    # Sign-In (docs/protocols/sign_in.md): beta = c = 1 at init and every reset, resets every
    # reset_epochs, momentum kept at resets, decay λ on m and on w. beta_rel / normalize: the
    # grid's beta relative to the layer's weight scale (not the paper's). RiGL (Evci et al.
    # 2020): every rigl_delta_t steps from the batch's dense gradient, cosine drop fraction
    # alpha = 0.3 until rigl_end of training, ERK start mask. AC/DC (Peste et al. 2021): dense
    # warm-up, alternating compressed / decompressed phases, a final compressed phase.
    c.method = ConfigDict({
        "sign_in": False, "c": 1.0, "reset_epochs": reset_epochs, "reset_momentum": False,
        "mw_decay_scale": 1.0, "beta_rel": 0.0, "normalize": False,
        "rigl": False, "rigl_alpha": 0.3, "rigl_delta_t": 100, "rigl_end": 0.75,
        "rigl_distribution": "erk",
        "acdc": False, "acdc_warmup": 0.1, "acdc_phase": 0.05, "acdc_final": 0.1,
        "acdc_scope": "global",
        # STR (Kusupati et al. 2020; signticket.str_sparsity): one decay λ on every parameter
        # (replacing optimizer.weight_decay in STR arms) and the thresholds' initial s. Their
        # defaults are the official ResNet-50 / ImageNet 90 % config; smaller scales calibrate
        # them (sign_in_cpu_str.py). Dropped from every other arm's run config.
        "str": False, "str_s_init": -3200.0, "str_weight_decay": 2.251757813e-5,
    })
    c.experiment = ConfigDict({
        "seeds": tuple(seeds),
        "sparsities": tuple(sparsities),
        "arms": tuple(arms),
        "hessian_batch": 256,  # fixed training examples for the top Hessian eigenvalue
        "hessian_iters": 20,
        "snapshot_epochs": (),  # save params + mask after these epochs (sign alignment)
        "single_neuron": False,  # put the single-neuron mechanism demonstration in the report
        "compile_cache": True,  # persistent XLA cache: one compile per arm, not per run
        "paper": ConfigDict(paper or {}),  # {arm: {"90": acc %}} where the paper has numbers
        "note": "",
    })
    return c
