"""Linear mode connectivity: interpolation, barrier curves with BN re-estimation, barriers.

A barrier curve evaluates ``theta(alpha) = (1 - alpha) theta_a + alpha theta_b`` on a grid of
alphas. Interpolated networks have stale BatchNorm statistics, so at every alpha (endpoints
included, as the AWS code does) the running statistics are re-estimated from training batches
before the test set is scored. The whole curve is *one* jit-compiled program vmapped over alpha
(``jax.lax.map`` with ``batch_size`` bounds the memory of the vmapped evaluation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from signticket.errors import UserError
from signticket.losses import cross_entropy
from signticket.sharding import DATA_AXIS, make_mesh
from signticket.tree import PyTree, check_same_structure

if TYPE_CHECKING:  # the core imports without flax: a model is anything with Flax's `apply`
    import flax.linen as nn

Variables = dict[str, PyTree]  # {"params": ..., "batch_stats": ...}


class BarrierCurve(NamedTuple):
    """Test error and loss of the interpolated networks at each alpha."""

    alphas: jax.Array
    error: jax.Array
    loss: jax.Array


def interpolate(a: PyTree, b: PyTree, alpha: float | jax.Array) -> PyTree:
    """``(1 - alpha) a + alpha b`` leafwise (``alpha=0`` gives ``a``, ``alpha=1`` gives ``b``)."""
    check_same_structure(a, b, "a", "b")
    return jax.tree.map(lambda x, y: (1 - alpha) * x + alpha * y, a, b)


def _over_chord(values: jax.Array, alphas: jax.Array) -> jax.Array:
    line = (1 - alphas) * values[0] + alphas * values[-1]
    return jnp.max(values - line)


def _over_midpoint_mean(values: jax.Array) -> jax.Array:
    return jnp.max(values - (values[0] + values[-1]) / 2)


def error_barrier_over_chord(curve: BarrierCurve) -> jax.Array:
    """``max_alpha [err(alpha) - ((1 - alpha) err(0) + alpha err(1))]``: how far the error along
    the path rises above the straight line between the endpoints (0 for a linear or convex path;
    in error units, e.g. 0.05 = 5 points). The definition of Frankle et al. 2020 / Entezari et
    al. 2022; the permuted-masks and Sign-In experiments use it."""
    return _over_chord(curve.error, curve.alphas)


def error_barrier_midpoint_mean(curve: BarrierCurve) -> jax.Array:
    """``max_alpha [err(alpha) - (err(0) + err(1)) / 2]``: the rise above the *mean* of the
    endpoint errors, the curve the official AWS code plots (``calculate_error_barrier.py``:
    ``plt.plot(alphas, errors - (errors[0] + errors[-1]) / 2)``); the AWS experiments report its
    maximum. Equals :func:`error_barrier_over_chord` at ``alpha = 1/2`` and whenever the
    endpoint errors are equal; otherwise it can be negative and differs near the endpoints."""
    return _over_midpoint_mean(curve.error)


def loss_barrier_over_chord(curve: BarrierCurve) -> jax.Array:
    """Like :func:`error_barrier_over_chord`, on the test loss."""
    return _over_chord(curve.loss, curve.alphas)


def loss_barrier_midpoint_mean(curve: BarrierCurve) -> jax.Array:
    """Like :func:`error_barrier_midpoint_mean`, on the test loss."""
    return _over_midpoint_mean(curve.loss)


#: Kept for existing callers: the over-the-chord definitions.
error_barrier = error_barrier_over_chord
loss_barrier = loss_barrier_over_chord

#: Barrier definitions by name, for experiment configs.
BARRIERS = {
    "over_chord": (error_barrier_over_chord, loss_barrier_over_chord),
    "midpoint_mean": (error_barrier_midpoint_mean, loss_barrier_midpoint_mean),
}


def check_alphas(alphas: Any) -> jax.Array:
    """An increasing grid in [0, 1] that starts at 0 and ends at 1 (else ``ValueError``)."""
    a = np.asarray(alphas, np.float32)
    if a.ndim != 1 or a.size < 2:
        raise UserError(f"alphas must be a 1-D grid of at least 2 points, got shape {a.shape}")
    if a[0] != 0.0 or a[-1] != 1.0 or np.any(np.diff(a) <= 0):
        raise UserError(f"alphas must increase from exactly 0 to exactly 1, got {a.tolist()}")
    return jnp.asarray(a)


@jax.jit
def _leaves_equal(a: list, b: list) -> list[jax.Array]:
    # One program for every leaf: eager comparisons would compile once per leaf shape.
    return [jnp.all(jnp.asarray(x, bool) == jnp.asarray(y, bool))
            for x, y in zip(a, b, strict=True)]


def _check_masks(mask_a: PyTree | None, mask_b: PyTree | None) -> None:
    if mask_a is None or mask_b is None:
        return
    check_same_structure(mask_a, mask_b, "mask_a", "mask_b")
    paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(mask_a)[0]]
    same = jax.device_get(_leaves_equal(jax.tree.leaves(mask_a), jax.tree.leaves(mask_b)))
    for path, equal in zip(paths, same, strict=True):
        if not equal:
            raise UserError(
                f"barrier between models with different masks (first difference at "
                f"{jax.tree_util.keystr(path)}); interpolate networks that share one mask"
            )


def reestimate_batch_stats(
    model: nn.Module, params: PyTree, batch_stats: PyTree, images: jax.Array
) -> PyTree:
    """BatchNorm running statistics as the plain average of per-batch statistics over
    ``images[i]`` (stacked preprocessed batches), i.e. PyTorch's ``momentum=None`` reset.

    Flax updates ``r' = m r + (1 - m) s`` for a batch statistic ``s``; applying it once from
    ``r = 0`` and once from ``r = 1`` gives ``m`` per entry, so ``s = r'_0 / (1 - m)`` exactly,
    whatever momentum each layer uses."""
    if not batch_stats:
        return batch_stats
    zeros = jax.tree.map(jnp.zeros_like, batch_stats)
    ones = jax.tree.map(jnp.ones_like, batch_stats)

    def updated(stats, x):
        _, new = model.apply(
            {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
        )
        return new["batch_stats"]

    momentum = jax.tree.map(lambda o, z: o - z, updated(ones, images[0]), updated(zeros, images[0]))

    def body(acc, x):
        stat = jax.tree.map(lambda z, m: z / (1 - m), updated(zeros, x), momentum)
        return jax.tree.map(jnp.add, acc, stat), None

    total, _ = jax.lax.scan(body, zeros, images)
    return jax.tree.map(lambda t: t / images.shape[0], total)


def fresh_batch_stats(batch_stats: PyTree) -> PyTree:
    """Running statistics as a freshly built BatchNorm holds them: mean 0, var 1."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.ones_like(x) if str(getattr(p[-1], "key", "")) == "var"
        else jnp.zeros_like(x), batch_stats)


def reestimate_batch_stats_ema(
    model: nn.Module, params: PyTree, batch_stats: PyTree, images: jax.Array
) -> PyTree:
    """BatchNorm running statistics as the official AWS code re-estimates them: start from a
    fresh model's statistics (``calculate_error_barrier.py`` builds each interpolated network
    from ``copy.deepcopy(initial_model)``) and run the batches ``images[i]`` (one pass over the
    augmented, shuffled training set there) in train mode, each updating
    ``r <- momentum * r + (1 - momentum) * s`` with the model's own momentum (PyTorch's 0.1 =
    0.9 here). ``batch_stats`` gives only the structure."""
    if not batch_stats:
        return batch_stats

    def body(stats, x):
        _, new = model.apply(
            {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
        )
        return new["batch_stats"], None

    out, _ = jax.lax.scan(body, fresh_batch_stats(batch_stats), images)
    return out


#: BN re-estimation along a barrier curve: ``average`` (exact mean of per-batch statistics, as
#: REPAIR / sparse-rebasin's ``reset_bn_stats`` with ``momentum=None``) or ``ema`` (official AWS).
BN_MODES = ("average", "ema")


def _stack_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, mesh):
    """Pad to whole batches; returns device arrays [n_batches, B, ...] split over the mesh."""
    n = len(labels)
    n_batches = -(-n // batch_size)
    pad = n_batches * batch_size - n
    weight = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
    labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
    shape = (n_batches, batch_size)
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, DATA_AXIS))
    return jax.device_put(
        (images.reshape(shape + images.shape[1:]), labels.reshape(shape), weight.reshape(shape)),
        sharding,
    )


def _prepare(a, b, dataset, *, bn_batches, batch_size, seed, reestimate_bn, mask_a, mask_b, mesh,
             bn_batch_size=None):
    check_same_structure(a["params"], b["params"], "params of a", "params of b")
    check_same_structure(
        a.get("batch_stats", {}), b.get("batch_stats", {}), "batch_stats of a", "batch_stats of b"
    )
    _check_masks(mask_a, mask_b)
    mesh = mesh or make_mesh()
    batch_size = max(mesh.size, batch_size - batch_size % mesh.size)
    test = _stack_batches(*_test_arrays(dataset), batch_size, mesh)
    n_train = _num_train(dataset)
    bn_bs = batch_size if bn_batch_size is None else max(
        mesh.size, bn_batch_size - bn_batch_size % mesh.size)
    # bn_batches=0: one pass over the whole training set (full batches), as the AWS code does
    n_bn = (n_train if bn_batches <= 0 else min(bn_batches * bn_bs, n_train)) // bn_bs
    if reestimate_bn and a.get("batch_stats") and n_bn < 1:
        raise UserError(f"need at least one training batch of {bn_bs} to re-estimate BN")
    bn_x, _, _ = _stack_batches(*_train_sample(dataset, max(n_bn, 1) * bn_bs, seed), bn_bs, mesh)
    return (bn_x, *test)


# A dataset is either in memory (arrays) or a data source (signticket.data.Source: a streamed
# split such as ImageNet serves a seeded sample and its test split without materialising the
# training set). Duck-typed, so the core never imports the data layer.

def _num_train(dataset) -> int:
    n = getattr(dataset, "num_train", None)
    return int(n) if n is not None else len(dataset.train_labels)


def _test_arrays(dataset) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(dataset, "test_arrays"):
        return dataset.test_arrays()
    return dataset.test_images, dataset.test_labels


def _train_sample(dataset, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(dataset, "train_sample"):
        return dataset.train_sample(n, seed)
    # The first n of a RandomState(seed) permutation (Source.train_sample keeps this contract).
    idx = np.random.RandomState(seed).permutation(len(dataset.train_labels))[:n]
    return dataset.train_images[idx], dataset.train_labels[idx]


def barrier_curve(
    model: nn.Module,
    preprocess: Callable,
    a: Variables,
    b: Variables,
    dataset: Any,
    *,
    alphas: Any = None,
    bn_batches: int = 10,
    batch_size: int = 500,
    seed: int = 0,
    reestimate_bn: bool = True,
    alpha_chunk: int | None = None,
    mask_a: PyTree | None = None,
    mask_b: PyTree | None = None,
    mesh=None,
    loop: bool = False,
    bn_mode: str = "average",
    bn_batch_size: int | None = None,
) -> BarrierCurve:
    """Test error/loss along the linear path from ``a`` to ``b`` (default: 11 alphas).

    At each alpha, BN statistics are re-estimated from ``bn_batches`` training batches of
    ``batch_size`` (a fixed random subset, no augmentation), unless ``reestimate_bn=False``
    (then the interpolated statistics are used). One compiled program over every alpha, which
    evaluates ``alpha_chunk`` alphas at once (vmapped). Default: all of them on GPU/TPU, one at
    a time on CPU, where vmapping over weights turns convolutions into grouped convolutions that
    XLA's CPU backend runs ~20 % slower than a sequence of plain ones (``python -m bench.suite``).
    ``loop=True`` runs one program call per alpha (the reference the benchmark compares with).

    ``bn_mode``: ``average`` (default) sets the statistics to the exact average over the
    batches; ``ema`` (the official AWS procedure) starts from fresh statistics and applies the
    momentum update batch by batch, with ``preprocess``'s training augmentation (seeded by
    ``seed``). ``bn_batches=0`` uses one pass over the whole training set in batches of
    ``bn_batch_size`` (default ``batch_size``; the AWS code's training loader uses 128).
    """
    if bn_mode not in BN_MODES:
        raise UserError(f"unknown bn_mode {bn_mode!r}; available: {', '.join(BN_MODES)}")
    alphas = check_alphas(np.linspace(0, 1, 11) if alphas is None else alphas)
    data = _prepare(
        a,
        b,
        dataset,
        bn_batches=bn_batches,
        batch_size=batch_size,
        seed=seed,
        reestimate_bn=reestimate_bn,
        mask_a=mask_a,
        mask_b=mask_b,
        mesh=mesh,
        bn_batch_size=bn_batch_size,
    )
    data = (*data, jax.random.PRNGKey(seed))
    if loop:
        fn = _curve_fn(model, preprocess, reestimate_bn, 1, bn_mode)
        points = [fn(a, b, alphas[i : i + 1], *data) for i in range(len(alphas))]
        error = jnp.concatenate([p[0] for p in points])
        loss = jnp.concatenate([p[1] for p in points])
    else:
        if alpha_chunk is None:
            alpha_chunk = 1 if jax.default_backend() == "cpu" else len(alphas)
        fn = _curve_fn(model, preprocess, reestimate_bn, alpha_chunk, bn_mode)
        error, loss = fn(a, b, alphas, *data)
    return BarrierCurve(alphas, error, loss)


_CURVE_CACHE: dict = {}


def _curve_fn(model, preprocess, reestimate_bn: bool, alpha_chunk: int, bn_mode: str = "average"):
    key = (model, preprocess, reestimate_bn, alpha_chunk, bn_mode)
    if key in _CURVE_CACHE:
        return _CURVE_CACHE[key]

    def point(alpha, a, b, bn_x, test_x, test_y, test_w, key):
        params = interpolate(a["params"], b["params"], alpha)
        stats = interpolate(a.get("batch_stats", {}), b.get("batch_stats", {}), alpha)
        if reestimate_bn and stats and bn_mode == "ema":
            # the same augmented batches at every alpha (one key per batch)
            keys = jax.random.split(key, bn_x.shape[0])
            xs = jax.vmap(lambda x, k: preprocess(x, k, True))(bn_x, keys)
            stats = reestimate_batch_stats_ema(model, params, stats, xs)
        elif reestimate_bn and stats:
            xs = jax.vmap(lambda x: preprocess(x, None, False))(bn_x)
            stats = reestimate_batch_stats(model, params, stats, xs)
        variables = {"params": params, "batch_stats": stats} if stats else {"params": params}

        def body(acc, batch):
            x, y, w = batch
            logits = model.apply(variables, preprocess(x, None, False), train=False)
            wrong = jnp.sum((jnp.argmax(logits, -1) != y) * w)
            return (acc[0] + wrong, acc[1] + jnp.sum(cross_entropy(logits, y) * w)), None

        (wrong, loss), _ = jax.lax.scan(
            body, (jnp.zeros(()), jnp.zeros(())), (test_x, test_y, test_w)
        )
        n = jnp.sum(test_w)
        return wrong / n, loss / n

    @jax.jit
    def curve(a, b, alphas, bn_x, test_x, test_y, test_w, key):
        return jax.lax.map(
            lambda al: point(al, a, b, bn_x, test_x, test_y, test_w, key), alphas,
            batch_size=alpha_chunk,
        )

    _CURVE_CACHE[key] = curve
    return curve
