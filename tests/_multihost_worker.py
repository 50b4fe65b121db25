"""One process of the 2-process test (``tests/test_multihost.py``): a train run, an IMP round
and a barrier curve on a Fashion-MNIST subset; process 0 prints the numbers as JSON.

``python tests/_multihost_worker.py RUNS_ROOT [COORDINATOR NUM_PROCESSES PROCESS_ID]``
"""

from __future__ import annotations

import json
import sys


def _save_decisions() -> list[list[bool]]:
    """Every process's ``SaveCadence`` decisions for epochs 1 and 2 of 3 when their clocks
    disagree: process 0's finds the 10 s interval over at epoch 2 only, process 1's at epoch 1
    only. All must follow process 0 (each takes part in every save), one row per process."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    from signticket.fit import SaveCadence

    now = [0.0]
    cadence = SaveCadence(every=1, min_interval_s=10.0, clock=lambda: now[0])
    times = (5.0, 20.0) if jax.process_index() == 0 else (20.0, 25.0)
    decisions = []
    for epoch, t in zip((1, 2), times, strict=True):
        now[0] = t
        decisions.append(cadence.due(epoch, 3))
        if decisions[-1]:
            cadence.saved()
    rows = multihost_utils.process_allgather(np.asarray(decisions))
    return np.asarray(rows).reshape(jax.process_count(), -1).tolist()


def main(argv: list[str]) -> int:
    from signticket import cli, cpu_tuning

    cpu_tuning.apply()
    runs_root, *dist = argv
    if dist:
        cli.init_distributed(dist[0], int(dist[1]), int(dist[2]))
    import jax
    import numpy as np
    from ml_collections import ConfigDict

    from signticket import lmc, lottery
    from signticket.checkpoint import is_primary
    from signticket.configs import train as train_config
    from signticket.runs import build_model, load_dataset, train_run

    cfg = train_config.get_config()
    cfg.model.kwargs = ConfigDict({"channels": (4, 8)})
    cfg.data.train_subset, cfg.data.test_subset = 256, 128
    cfg.epochs, cfg.batch_size = 2, 32
    dataset = load_dataset(cfg.data)
    run = train_run(cfg, dataset, runs_root=runs_root, progress=False)

    imp_cfg = ConfigDict(cfg.to_dict())
    del imp_cfg["epochs"]
    imp_cfg.aws = True
    imp_cfg.imp = ConfigDict({"mode": "constant", "warmup_epochs": 1, "rounds": 1,
                              "epochs_per_round": 1, "fraction": 0.2, "scope": "global",
                              "rewind_epoch": 0})
    rounds = lottery.imp(imp_cfg, dataset, runs_root=runs_root, progress=False)
    model = build_model(cfg.model, dataset.num_classes)
    variables = [{"params": r.params, "batch_stats": r.batch_stats} for r in rounds]
    curve = lmc.barrier_curve(model, dataset.preprocess, variables[0], variables[1], dataset,
                              alphas=np.linspace(0, 1, 3), bn_batches=2, batch_size=64)
    out = {
        "save_decisions": _save_decisions(),
        "processes": jax.process_count(),
        "devices": jax.device_count(),
        "train": run.summary,
        "rounds": [r.summary for r in rounds],
        "remaining": [r.remaining for r in rounds],
        "mask_kept": [int(sum(np.asarray(m).sum() for m in jax.tree.leaves(r.mask)))
                      for r in rounds],
        "barrier_error": np.asarray(curve.error).tolist(),
        "barrier_loss": np.asarray(curve.loss).tolist(),
    }
    if is_primary():
        print("RESULT " + json.dumps(out, default=float), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
