"""The models and inputs the suite benchmarks, in full and ``--tiny`` (smoke-test) sizes.

Full sizes are the registry models the task names; tiny sizes swap in smaller members of the
same families (a depth-8 CIFAR ResNet, a 3-conv VGG) so a smoke run compiles in seconds.
Their figures are not claims about anything.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from signticket import models
from signticket.tree import is_prunable, select


@dataclasses.dataclass(frozen=True)
class Workload:
    """A model and the input it is benchmarked on: uint8 images of ``image_shape``, ``batch``
    examples per step."""

    name: str
    model: nn.Module
    image_shape: tuple[int, int, int]
    batch: int
    description: str

    def describe(self) -> dict[str, Any]:
        return {"model": self.description, "batch": self.batch,
                "image_shape": list(self.image_shape)}


def train_workload(name: str, tiny: bool) -> Workload:
    """The train-step throughput workloads: ``resnet20``, ``convnet``, ``vgg11``."""
    if name == "resnet20":
        if tiny:
            return Workload(name, models.CifarResNet(stage_sizes=(1, 1, 1), widths=(8, 16, 32)),
                            (32, 32, 3), 8, "cifar_resnet depth 8, widths 8/16/32 (tiny)")
        return Workload(name, models.get("resnet20", num_classes=10), (32, 32, 3), 128,
                        "resnet20")
    if name == "convnet":
        return Workload(name, models.get("convnet", num_classes=10, channels=(16, 32, 64)),
                        (28, 28, 1), 8 if tiny else 128, "convnet (16, 32, 64)")
    if name == "vgg11":
        if tiny:
            return Workload(name, models.VGG(cfg=(16, "M", 32, "M", 64, "M")), (32, 32, 3), 8,
                            "VGG 16-M-32-M-64-M (tiny)")
        return Workload(name, models.get("vgg11", num_classes=10), (32, 32, 3), 128,
                        "vgg11 (no BN, conv bias)")
    raise ValueError(f"unknown workload {name!r}")


# (steps per timed sample, samples) of the train-step throughput rows at full size.
TRAIN_STEPS = {"resnet20": (3, 5), "convnet": (10, 5), "vgg11": (2, 3)}


def train_steps(name: str, tiny: bool) -> tuple[int, int]:
    """``(steps per timed sample, samples)`` for the train-step workload ``name``."""
    return (1, 1) if tiny else TRAIN_STEPS[name]


_SHAPES_CACHE: dict[tuple, Any] = {}


def _init_leaf(rs: np.random.RandomState, collection: str, name: str, shape: tuple[int, ...]):
    if collection == "params" and name == "kernel":
        # signticket.models.layers.kernel_init: variance_scaling(2, fan_in, untruncated normal)
        fan_in = int(np.prod(shape[:-1]))
        return (rs.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    if name in ("bias", "mean"):
        return np.zeros(shape, np.float32)
    if name in ("scale", "var"):
        return np.ones(shape, np.float32)
    raise ValueError(f"no bench init for {collection} leaf {name!r}")


def init_variables(model: nn.Module, image_shape: Sequence[int], seed: int) -> dict[str, Any]:
    """``{"params", "batch_stats"}`` of ``model`` drawn in numpy from ``seed`` with the
    distributions of :mod:`signticket.models.layers` (Kaiming-normal fan-in kernels, zero
    biases, BN scale 1 / bias 0, running mean 0 / var 1); shapes from ``jax.eval_shape``.

    Why not ``model.init``: its jitted init compiles in 15-30 s on this 2-core CPU (almost all
    of it the threefry RNG of every leaf), longer than the train step it would feed; no
    benchmark here times initialization, so the suite does not pay for it per model.
    """
    key = (repr(model), tuple(image_shape))
    if key not in _SHAPES_CACHE:
        x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
        _SHAPES_CACHE[key] = jax.eval_shape(
            lambda k, x: model.init(k, x, train=False), jax.random.PRNGKey(0), x)
    shapes = _SHAPES_CACHE[key]
    rs = np.random.RandomState(seed)
    out = {}
    for collection in ("params", "batch_stats"):
        tree = shapes.get(collection, {})
        out[collection] = jax.tree_util.tree_map_with_path(
            lambda path, leaf, c=collection: jnp.asarray(
                _init_leaf(rs, c, str(getattr(path[-1], "key", path[-1])), leaf.shape)),
            tree,
        )
    return out


def random_mask(params: Any, sparsity: float, seed: int = 1) -> Any:
    """A uniform random mask like ``masks.random_mask(..., "uniform")`` (every prunable leaf
    keeps ``round((1 - sparsity) * size)`` entries at random), drawn in numpy: the library's
    per-leaf eager ops compile ~100 tiny programs, which the benchmarks do not time."""
    rs = np.random.RandomState(seed)
    chosen = select(params, is_prunable)
    leaves, treedef = jax.tree.flatten(params)

    def one(leaf, c):
        if not c:
            return jnp.ones(leaf.shape, bool)
        keep = np.zeros(leaf.size, bool)
        keep[rs.permutation(leaf.size)[: round((1 - sparsity) * leaf.size)]] = True
        return jnp.asarray(keep.reshape(leaf.shape))

    return jax.tree.unflatten(treedef, [one(x, c) for x, c in
                                        zip(leaves, treedef.flatten_up_to(chosen), strict=True)])


def synthetic_batch(batch: int, image_shape: Sequence[int], seed: int = 0,
                    num_classes: int = 10) -> dict[str, np.ndarray]:
    """``{"image": uint8 [batch, *image_shape], "label": int32 [batch]}`` uniformly at random."""
    rs = np.random.RandomState(seed)
    return {
        "image": rs.randint(0, 256, (batch, *image_shape)).astype(np.uint8),
        "label": rs.randint(0, num_classes, batch).astype(np.int32),
    }


def param_count(params: Any) -> int:
    """Number of scalars in a params tree."""
    return int(sum(np.size(x) for x in jax.tree.leaves(params)))
