"""An epoch of the permuted-masks MLP through the epoch loop itself (:func:`signticket.fit.fit`,
:func:`~signticket.fit.fit_lockstep`): many steps per program call vs one, alone vs side by side.

    python -m bench.epoch_calls                 # 4 members, 100 steps an epoch
    python -m bench.epoch_calls --tiny          # smoke run (CI): tiny sizes, no figures claimed

What is measured: the MLP 784-128-128-128-10 of ``permuted_fmnist_mlp.py`` (the engine's XLA
options, masked SGD 0.05, momentum 0.9, weight decay 5e-4, batch 128) on an in-memory
Fashion-MNIST-shaped synthetic split (12,800 train images: 100 steps an epoch; 256 test
images, evaluated after the epoch as fit does), ``members`` runs of different inits sharing one
data order, as a permuted-masks cell's four sparse runs do. One sample is one epoch of every
member, warm (programs compiled before). Four variants, their samples taken in turn:

* ``sequential_step_per_call``: ``fit`` of each member after the other, one train step per
  program call (the epoch loop before stop 39; what a source of host batches still gets);
* ``sequential``: the same, ``STEPS_PER_CALL`` steps per call (``Engine.steps_on_device``);
* ``side_by_side_step_per_call``: ``fit_lockstep`` of the members, one step of all per call;
* ``side_by_side``: ``fit_lockstep``, ``STEPS_PER_CALL`` steps of all per call (what
  experiments run: ``experiment.lockstep`` is 4 in the MLP configs).

Figure: total train images/s over all members, and ratios paired by round. Goal 4 of issue 18:
the multi-seed path >= 1.5x the sequential rate.
"""

from __future__ import annotations

import argparse
from typing import Any

import jax
import numpy as np

from bench import report, timing, workloads
from signticket import cpu_tuning, fit, models, optim
from signticket import data as data_lib
from signticket.sharding import make_mesh
from signticket.train import Engine

IMAGE_SHAPE = (28, 28, 1)
BATCH = 128


class StepPerCall:
    """An in-memory source without ``device_epoch``: the epoch loop steps once per call on
    its device-gathered batches, as it did for every source before stop 39."""

    def __init__(self, source: data_lib.DeviceSource):
        self._source = source
        self.name, self.num_classes = source.name, source.num_classes
        self.image_shape, self.preprocess = source.image_shape, source.preprocess

    @property
    def num_train(self) -> int:
        return self._source.num_train

    def __getattr__(self, name: str) -> Any:
        if name == "device_epoch":
            raise AttributeError(name)
        return getattr(self._source, name)


def _dataset(n_train: int, n_test: int) -> data_lib.Dataset:
    rs = np.random.RandomState(0)
    pre = data_lib.Preprocess(mean=(0.2860,), std=(0.3530,))
    return data_lib.Dataset(
        "synthetic-fmnist", 10, IMAGE_SHAPE,
        rs.randint(0, 256, (n_train, *IMAGE_SHAPE)).astype(np.uint8),
        rs.randint(0, 10, n_train).astype(np.int32),
        rs.randint(0, 256, (n_test, *IMAGE_SHAPE)).astype(np.uint8),
        rs.randint(0, 10, n_test).astype(np.int32), pre)


def run(tiny: bool = False, members: int = 4, repeats: int = 7) -> dict[str, Any]:
    """Images/s of the four variants (module docstring) and their paired ratios."""
    if members < 2:
        raise ValueError(f"--members must be >= 2, got {members}")
    n_train, n_test, batch = (64, 32, 16) if tiny else (100 * BATCH, 256, BATCH)
    repeats = 1 if tiny else repeats
    net = models.get("mlp", num_classes=10, widths=(128, 128, 128))
    variables = workloads.init_variables(net, IMAGE_SHAPE, 0)
    options = cpu_tuning.program_options(variables)
    ds = _dataset(n_train, n_test)
    engine = Engine(net, optim.masked_updates(optim.sgd(0.05, 0.9, 5e-4)), ds.preprocess,
                    make_mesh(), compiler_options=options or None)
    on_device = data_lib.DeviceSource(ds)
    sources = {"": on_device, "_step_per_call": StepPerCall(on_device)}
    states = {f"{how}{calls}": [engine.init_state(jax.random.PRNGKey(s), ds.train_images[:1])
                                for s in range(members)]
              for how in ("sequential", "side_by_side") for calls in sources}

    def sequential(calls: str):
        name = f"sequential{calls}"
        for i, state in enumerate(states[name]):
            states[name][i], summary = fit.fit(engine, state, sources[calls], epochs=1,
                                               batch_size=batch, progress=False)
        return summary

    def side_by_side(calls: str):
        name = f"side_by_side{calls}"
        out = fit.fit_lockstep(engine, [fit.Member(s) for s in states[name]], sources[calls],
                               epochs=1, batch_size=batch, progress=False)
        states[name] = [state for state, _ in out]
        return out[-1][1]

    variants = {f"{how.__name__}{calls}": (lambda how=how, calls=calls: how(calls))
                for how in (sequential, side_by_side) for calls in sources}
    t = timing.time_alternating(variants, repeats=repeats)
    images = members * (n_train // batch) * batch
    base, old = t["sequential"], t["sequential_step_per_call"]
    return {
        "model": "MLP 784-128-128-128-10",
        "members": members,
        "batch": batch,
        "steps_per_epoch": n_train // batch,
        "steps_per_call": fit.STEPS_PER_CALL,
        "compiler_options": options,
        "img_per_s": {name: round(s.rate(images), 1) for name, s in t.items()},
        "side_by_side_vs_sequential": round(timing.paired_speedup(base, t["side_by_side"]), 3),
        "side_by_side_vs_sequential_step_per_call": round(
            timing.paired_speedup(old, t["side_by_side"]), 3),
        "sequential_vs_step_per_call": round(timing.paired_speedup(old, base), 3),
        "side_by_side_vs_its_step_per_call": round(
            timing.paired_speedup(t["side_by_side_step_per_call"], t["side_by_side"]), 3),
        **{name: s.to_json() for name, s in t.items()},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--tiny", action="store_true", help="smoke-test sizes (figures claim nothing)")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    if args.members < 2 or args.repeats < 1:
        p.error(f"need --members >= 2 and --repeats >= 1, got {args.members}, {args.repeats}")
    result = {**run(args.tiny, args.members, args.repeats), "machine": report.machine_info()}
    for name, rate in result["img_per_s"].items():
        print(f"{name:30s} {rate:10.1f} img/s")
    for key in ("side_by_side_vs_sequential", "side_by_side_vs_sequential_step_per_call",
                "sequential_vs_step_per_call", "side_by_side_vs_its_step_per_call"):
        print(f"{key:42s} {result[key]:.3f}x (paired by round)")
    return report.write_result(result, args.out)


if __name__ == "__main__":
    main()
