"""Dress rehearsal: every ``signticket reproduce`` target end to end at smoke scale.

Each target runs its paper config — model, stages, schedules, table and figures — through the
real CLI, TFDS and input pipeline (in-memory for CIFAR / Tiny-ImageNet / Fashion-MNIST, tf.data
streaming for ImageNet) on TFDS mock data (``tests/_mock_tfds.py``), with only counts shrunk by
``--config`` overrides: one epoch per stage, one round, one seed, a few dozen examples, narrow
layers. A target that cannot run this way is broken at paper scale too (a key renamed, a stage
that crashes after hours of training, a table that cannot be written). ImageNet runs on 8
forced host devices, so its batches really are split over a mesh.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from signticket.experiments import suite

ROOT = Path(__file__).resolve().parent.parent
MOCK_EXAMPLES = 48  # per split; subsets below take part of them

_AWS = ["data.train_subset=32", "data.test_subset=16", "batch_size=8",
        "imp.warmup_epochs=1", "imp.rounds=1", "imp.epochs_per_round=1", "final.epochs=1",
        "experiment.final_rounds=(1,)", "experiment.seeds=(0,)", "experiment.barrier_points=2",
        "experiment.bn_batches=1", "experiment.bn_batch_size=8",
        "experiment.barrier_batch_size=8"]
# Tiny-ImageNet's 64x64 images cost 4x CIFAR's per step on CPU: one step per epoch.
_AWS_64PX = [*[o for o in _AWS if o.split("=")[0] not in (
    "data.train_subset", "batch_size", "experiment.bn_batch_size",
    "experiment.barrier_batch_size")], "data.train_subset=16", "batch_size=16",
    "experiment.bn_batch_size=16", "experiment.barrier_batch_size=16"]
_PERMUTED = ["data.train_subset=32", "data.test_subset=16", "batch_size=8", "dense_epochs=2",
             "rewind_epochs=(1,)", "imp.ft_epochs=1", "imp.fraction=0.5",
             "experiment.sparsities=(0.5,)", "experiment.seeds=(0,)",
             "experiment.barrier_points=2", "experiment.bn_batches=1",
             "experiment.barrier_batch_size=8", "matching.batches=1", "matching.batch_size=8"]
_SIGN_IN = ["data.train_subset=32", "data.test_subset=16", "batch_size=8", "epochs=1",
            "method.reset_epochs=1", "experiment.seeds=(0,)", "experiment.sparsities=(0.9,)",
            "experiment.hessian_batch=8", "experiment.hessian_iters=2"]
_COMPOSED = ["data.train_subset=32", "data.test_subset=16", "batch_size=8",
             "aws.imp.warmup_epochs=1", "aws.imp.rounds=2", "aws.final.epochs=1",
             "permuted.dense_epochs=2", "permuted.rewind_epoch=1", "permuted.imp.rewind_epoch=1",
             "permuted.imp.fraction=0.5", "aws.imp.fraction=0.5", "permuted.sparsity=0.75",
             "permuted.matching.batches=1", "permuted.matching.batch_size=8",
             "experiment.seeds=(0,)"]

#: ResNet-50 on streamed ImageNet at smoke scale: narrow layers, 32x32 crops.
_NARROW_IMAGENET = ["model.kwargs.widths=(4,4,4,4)", "data.image_size=32"]

#: target -> (overrides, forced host devices). Narrow layers, same depth and stages.
TARGETS = {
    "aws-cifar100-resnet50": ([*_AWS, "model.kwargs.widths=(4,4,4,4)"], 1),
    "aws-cifar100-mobilenetv2": ([*_AWS, "model.kwargs.width_mult=0.1"], 1),
    "aws-imagenet-resnet50": ([*_AWS, "model.kwargs.widths=(4,4,4,4)", "data.image_size=32"],
                              8),
    # The remaining official AWS scripts; ImageNet ones stream on one device (the 8-device mesh
    # is rehearsed once, above).
    "aws-imagenet-mobilenetv2": ([*_AWS, "model.kwargs.width_mult=0.1", "data.image_size=32"],
                                 1),
    "aws-imagenet-mlpmixer": ([*_AWS, "data.image_size=32", "model.kwargs.image_size=32",
                               "model.kwargs.patch_size=8", "model.kwargs.dim=16",
                               "model.kwargs.depth=2"], 1),
    "aws-cifar100-efficientnet": ([*_AWS, "model.kwargs.width_mult=0.1"], 1),
    "aws-cifar100-shufflenet": ([*_AWS, "model.kwargs.width_mult=0.1"], 1),
    "aws-tiny-imagenet-resnet50": ([*_AWS_64PX, "model.kwargs.widths=(4,4,4,4)"], 1),
    "aws-tiny-imagenet-mobilenetv2": ([*_AWS_64PX, "model.kwargs.width_mult=0.1"], 1),
    "aws-tiny-imagenet-efficientnet": ([*_AWS_64PX, "model.kwargs.width_mult=0.1"], 1),
    "aws-tiny-imagenet-shufflenet": ([*_AWS_64PX, "model.kwargs.width_mult=0.1"], 1),
    "permuted-cifar10-resnet20": (_PERMUTED, 1),
    "permuted-cifar100-resnet20": (_PERMUTED, 1),
    "permuted-cifar10-vgg11": (_PERMUTED, 1),
    "sign-in-cifar10-resnet20": (_SIGN_IN, 1),
    "sign-in-cifar100-resnet18": ([*_SIGN_IN, "model.kwargs.widths=(8,8,8,8)"], 1),
    "composed": (_COMPOSED, 1),
    "permuted-imagenet-resnet50": ([*_PERMUTED, *_NARROW_IMAGENET, "model.kwargs.stem_width=4",
                                    "optimizer.warmup_epochs=0",
                                    "sparse.optimizer.warmup_epochs=0"], 8),
    # The streamed Sign-In targets run on one device: the 8-device mesh (compiled for 8
    # shards on 2 cores, several minutes) is covered by the AWS and permuted ImageNet targets.
    "sign-in-imagenet-resnet50": ([*_SIGN_IN, *_NARROW_IMAGENET, "optimizer.warmup_epochs=0"],
                                  1),
    # AC/DC needs three epochs (dense warm-up, compressed, final); RiGL updates every 2 steps.
    # Two of the four arms (each arm compiles its own ResNet-50 step): AC/DC with Sign-In and
    # plain RiGL cover both methods and the composition.
    "sign-in-imagenet-resnet50-dst": ([*_SIGN_IN, *_NARROW_IMAGENET, "data.train_subset=16",
                                       "epochs=3", "method.rigl_delta_t=2",
                                       "optimizer.warmup_epochs=0",
                                       "experiment.arms=('acdc_sign_in','rigl')"], 1),
}


def test_every_reproduce_target_has_a_rehearsal():
    assert set(TARGETS) == set(suite.TABLES)


def _cli(args, tmp_path, devices):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
        SIGNTICKET_OFFLINE="1", TF_CPP_MIN_LOG_LEVEL="3")
    if devices > 1:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                            f" --xla_force_host_platform_device_count={devices}").strip()
    return subprocess.run(
        [sys.executable, str(ROOT / "tests" / "_mock_tfds.py"), str(MOCK_EXAMPLES), "--",
         *args, "--data-dir", str(tmp_path / "data"), "--no-progress"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=840)


# ResNet-50's compilations dominate (~2 CPU-minutes for the AWS pipeline): above CI's default
# per-test limit on a loaded machine, so these get their own.
@pytest.mark.timeout(900)
@pytest.mark.longest
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_reproduce_target_at_smoke_scale(target, tmp_path):
    overrides, devices = TARGETS[target]
    results, runs = tmp_path / "results", tmp_path / "runs"
    proc = _cli(["reproduce", target, "--results", str(results), "--runs-root", str(runs),
                 *[f"--config.{o}" for o in overrides]], tmp_path, devices)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = results / suite.TABLES[target].experiment / target
    meta = json.loads((out / "experiment.json").read_text())
    assert meta["experiment"] == suite.TABLES[target].experiment
    assert json.loads((out / "results.json").read_text())
    assert list(out.glob("*.md")), "no table written"
    figures = [line.split("figure: ", 1)[1] for line in proc.stdout.splitlines()
               if line.startswith("figure: ")]
    assert all(Path(tmp_path, f).is_file() for f in figures)
    # Every stage that trained finished (a DONE marker per run directory).
    run_dirs = [p for p in runs.iterdir() if (p / "config.json").is_file()]
    assert run_dirs and all((p / "DONE.json").is_file() for p in run_dirs)
    # And the table regenerates from disk alone.
    again = _cli(["tables", "--results", str(results)], tmp_path, 1)
    assert again.returncode == 0, again.stderr[-2000:]
