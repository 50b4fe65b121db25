"""The training engine: one sharded, jit-compiled train step and eval step for every method.

Methods never copy the step. They change what goes into it: the optimizer (``masked``,
Sign-In, ...), the params and masks in the :class:`TrainState`, or a ``pre_forward`` hook that
transforms params before the forward pass (AWS interpolates norm params there) using
``state.hook_state`` (any pytree, e.g. the init's norm params).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from signticket.data.pipeline import batch_at
from signticket.losses import cross_entropy
from signticket.models.variables import apply_init
from signticket.sharding import batch_sharded, make_mesh, replicated
from signticket.tree import PyTree, copy_arrays

#: ``pre_forward(params, hook_state, rng) -> params`` used by the forward pass in training.
PreForward = Callable[[PyTree, PyTree, jax.Array], PyTree]
#: ``preprocess(uint8 images, rng | None, train) -> float images``.
Preprocess = Callable[[jax.Array, jax.Array | None, bool], jax.Array]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training, as one pytree (what checkpoints hold)."""

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: optax.OptState
    rng: jax.Array
    hook_state: PyTree = dataclasses.field(default_factory=dict)


def _identity_preprocess(images, rng, train):
    return jnp.asarray(images, jnp.float32)


def _variables(params, batch_stats):
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


@dataclasses.dataclass(frozen=True, eq=False)
class Engine:
    """A model, an optimizer and an input transform, compiled once into sharded steps.

    ``train_step(state, batch) -> (state, metrics)`` and ``eval_step(state, batch) -> sums`` take
    a batch ``{"image": uint8 [B, ...], "label": int [B]}`` split over the mesh's data axis; the
    state is replicated. Gradients are global-batch means, and BatchNorm statistics are computed
    over the global batch, so 1 and N devices give the same result.

    ``compute_dtype`` (e.g. ``jnp.bfloat16``) is a mixed-precision policy: the forward and
    backward passes run in that dtype on a cast of the params and images, while params,
    optimizer state, BatchNorm statistics and the loss stay float32 (gradients reach the float32
    params through the cast). ``None`` computes in the params' dtype.
    """

    model: nn.Module
    tx: optax.GradientTransformation
    preprocess: Preprocess = _identity_preprocess
    mesh: Mesh = dataclasses.field(default_factory=make_mesh)
    pre_forward: PreForward | None = None
    compute_dtype: Any = None
    #: XLA options for the engine's programs (``jax.jit(compiler_options=...)``), e.g.
    #: :func:`signticket.cpu_tuning.program_options`; None: the process's flags alone.
    compiler_options: dict[str, Any] | None = None

    def __post_init__(self):
        if self.compute_dtype is not None and not jnp.issubdtype(self.compute_dtype, jnp.floating):
            raise ValueError(f"compute_dtype must be a floating dtype, got {self.compute_dtype!r}")

    def init_state(
        self,
        key: jax.Array,
        sample_images: jax.Array,
        *,
        params: PyTree | None = None,
        batch_stats: PyTree | None = None,
        hook_state: PyTree | None = None,
        mask: PyTree | None = None,
    ) -> TrainState:
        """Fresh state: model init from ``key`` (unless ``params`` are given), optimizer init,
        step 0. ``sample_images`` is a small uint8 batch giving the input shape. ``mask`` goes
        into the optimizer's state (:func:`signticket.optim.set_mask`) before the one copy
        :meth:`place` makes."""
        init_key, rng = jax.random.split(key)
        variables = (
            self.init_variables(init_key, sample_images)
            if params is None or batch_stats is None
            else {}
        )
        p = variables["params"] if params is None else params
        bs = variables.get("batch_stats", {}) if batch_stats is None else batch_stats
        state = TrainState(
            step=jnp.zeros((), jnp.int32),
            params=p,
            batch_stats=bs,
            opt_state=self.tx.init(p),
            rng=rng,
            hook_state={} if hook_state is None else hook_state,
        )
        if mask is not None:
            from signticket.optim import set_mask  # optim imports nothing of the engine's

            state = state.replace(opt_state=set_mask(state.opt_state, mask))
        return self.place(state)

    def place(self, state: TrainState) -> TrainState:
        """A private, replicated copy of ``state`` for the train step.

        The step donates its state, so no leaf may be shared with the caller (who may still use
        it: a mask, the init params) or with another leaf (hook_state holding the init params
        that also start training would be donated twice): every leaf is copied."""
        # Placed first, so the one copy program sees every leaf on the mesh.
        return copy_arrays(jax.device_put(state, replicated(self.mesh)))

    def init_variables(self, init_key: jax.Array, sample_images: jax.Array) -> dict[str, PyTree]:
        """``{"params", "batch_stats"}`` of a fresh model (jitted: one compile, not one per
        layer). ``init_state(key)`` uses ``init_key = jax.random.split(key)[0]``."""
        x = self.preprocess(jnp.asarray(sample_images[:1]), None, False)
        variables = apply_init(self.model, init_key, x)
        return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}

    def reset_optimizer(self, state: TrainState) -> TrainState:
        """Fresh optimizer state (momentum and schedule restart) for the current params."""
        return state.replace(
            opt_state=jax.device_put(self.tx.init(state.params), replicated(self.mesh))
        )

    # -- steps ---------------------------------------------------------------------------------

    def _in_compute_dtype(self, params: PyTree, images: jax.Array) -> tuple[PyTree, jax.Array]:
        if self.compute_dtype is None:
            return params, images
        dtype = jnp.dtype(self.compute_dtype)
        cast = lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
        return jax.tree.map(cast, params), images.astype(dtype)

    def _loss(self, params, state: TrainState, images, labels, rng):
        hook_rng, dropout_rng = jax.random.split(rng)
        if self.pre_forward is not None:
            params = self.pre_forward(params, state.hook_state, hook_rng)
        params, images = self._in_compute_dtype(params, images)
        logits, updates = self.model.apply(
            _variables(params, state.batch_stats),
            images,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": dropout_rng},
        )
        loss = cross_entropy(logits, labels).mean()
        return loss, (logits, updates.get("batch_stats", state.batch_stats))

    def _train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        # Per-step randomness is derived from the step count, so a resumed run replays exactly.
        aug_rng, fwd_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))
        images = self.preprocess(batch["image"], aug_rng, True)
        labels = batch["label"]
        grad_fn = jax.value_and_grad(self._loss, has_aux=True)
        (loss, (logits, batch_stats)), grads = grad_fn(state.params, state, images, labels, fwd_rng)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
        }
        new = state.replace(
            step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
        )
        return new, metrics

    def _eval_step(self, state: TrainState, batch: dict) -> dict:
        params, images = self._in_compute_dtype(
            state.params, self.preprocess(batch["image"], None, False))
        logits = self.model.apply(_variables(params, state.batch_stats), images, train=False)
        labels = batch["label"]
        weight = batch.get("weight", jnp.ones(labels.shape, jnp.float32))
        return {
            "loss_sum": jnp.sum(cross_entropy(logits, labels) * weight),
            "correct": jnp.sum((jnp.argmax(logits, -1) == labels) * weight),
            "count": jnp.sum(weight),
        }

    @property
    def train_step(self) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
        """The jit-compiled, sharded train step (state donated)."""
        if "_train_step_jit" not in self.__dict__:
            rep, data = replicated(self.mesh), batch_sharded(self.mesh)
            fn = jax.jit(
                self._train_step,
                in_shardings=(rep, data),
                out_shardings=(rep, rep),
                donate_argnums=(0,),
                compiler_options=self.compiler_options,
            )
            object.__setattr__(self, "_train_step_jit", fn)
        return self.__dict__["_train_step_jit"]

    def lockstep_train_step(
        self, members: int
    ) -> Callable[[list[TrainState], list[dict]], tuple[list[TrainState], list[dict]]]:
        """``members`` runs' train steps in one jit-compiled program (states donated):
        ``(states, batches) -> (states, metrics)``, lists in member order.

        The steps are side by side, not vmapped: each member runs exactly the ops of
        :attr:`train_step`, so its numbers are bit-identical to training it alone (a vmapped
        batch of matmuls rounds differently), while one dispatch drives them all and the
        members' independent ops fill cores one small model leaves idle. Members that share a
        data order may pass the same batch."""
        if members < 2:
            raise ValueError(f"lockstep_train_step needs >= 2 members, got {members}")
        cache = self.__dict__.setdefault("_lockstep_jit", {})
        if members not in cache:
            rep, data = replicated(self.mesh), batch_sharded(self.mesh)

            def steps(states, batches):
                outs = [self._train_step(s, b) for s, b in zip(states, batches, strict=True)]
                return [o[0] for o in outs], [o[1] for o in outs]

            cache[members] = jax.jit(steps, in_shardings=(rep, data), out_shardings=(rep, rep),
                                     donate_argnums=(0,), compiler_options=self.compiler_options)
        return cache[members]

    def steps_on_device(self, slots: tuple[int, ...]) -> Callable[..., tuple[list, list]]:
        """Many train steps of ``len(slots)`` runs in one jit-compiled program, their batches
        gathered inside it from epochs held on the devices (:class:`~signticket.data.DeviceEpoch`):
        ``(states, sums, images, labels, orders, lo, hi) -> (states, sums)`` runs steps ``lo``
        to ``hi - 1``, member ``m`` on batch ``i`` of ``orders[slots[m]]``, and adds each
        step's metrics to the member's running ``sums`` (states and sums donated).

        Per step it runs the ops of :attr:`train_step` (or :meth:`lockstep_train_step`) on the
        batch the per-step gather gives (:func:`~signticket.data.pipeline.batch_at`); what it
        saves is the host's work per step (a gather, a step and the metric sums dispatched),
        which on 2 cores is CPU time taken from a small model's step. The loop's bounds are
        operands, so one program serves any range and a run's numbers do not depend on how its
        epochs are cut into calls, nor on running it alone or beside others. Against a step per
        call they agree to float32 rounding: XLA may compile ops inside a loop differently (the
        MLP and the convnet come out bit-identical, a tiny net with XLA's convs does not)."""
        slots = tuple(int(k) for k in slots)
        if not slots or min(slots) < 0:
            raise ValueError(f"steps_on_device needs member slots >= 0, got {slots}")
        cache = self.__dict__.setdefault("_steps_on_device_jit", {})
        if slots not in cache:
            rep = replicated(self.mesh)

            def steps(states, sums, images, labels, orders, lo, hi):
                if len(orders) <= max(slots):
                    raise ValueError(f"member slots {slots} need {max(slots) + 1} epoch orders, "
                                     f"got {len(orders)}")

                def one_step(i, carry):
                    states, sums = carry
                    batches = [batch_at(images, labels, order, i, self.mesh) for order in orders]
                    outs = [self._train_step(s, batches[k])
                            for s, k in zip(states, slots, strict=True)]
                    return ([state for state, _ in outs],
                            [jax.tree.map(jnp.add, total, m)
                             for total, (_, m) in zip(sums, outs, strict=True)])

                return jax.lax.fori_loop(lo, hi, one_step, (states, sums))

            cache[slots] = jax.jit(steps, in_shardings=rep, out_shardings=(rep, rep),
                                   donate_argnums=(0, 1), compiler_options=self.compiler_options)
        return cache[slots]

    @property
    def eval_step(self) -> Callable[[TrainState, dict], dict]:
        """The jit-compiled, sharded eval step: weighted sums of loss and correct predictions."""
        if "_eval_step_jit" not in self.__dict__:
            rep, data = replicated(self.mesh), batch_sharded(self.mesh)
            fn = jax.jit(self._eval_step, in_shardings=(rep, data), out_shardings=rep,
                         compiler_options=self.compiler_options)
            object.__setattr__(self, "_eval_step_jit", fn)
        return self.__dict__["_eval_step_jit"]

    def evaluate(self, state: TrainState, batches) -> dict[str, float]:
        """Mean loss and accuracy over ``batches`` (an iterable of eval batches with weights)."""
        totals: dict[str, Any] | None = None
        for batch in batches:
            sums = self.eval_step(state, batch)
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        if totals is None:
            raise ValueError("evaluate: no batches")
        count = float(totals["count"])
        return {
            "loss": float(totals["loss_sum"]) / count,
            "accuracy": float(totals["correct"]) / count,
        }


def check_finite(metrics: dict[str, float], where: str) -> None:
    """Raise :class:`NonFiniteLossError` if the loss in ``metrics`` is NaN or infinite."""
    loss = metrics.get("loss")
    if loss is not None and not jnp.isfinite(loss):
        raise NonFiniteLossError(
            f"training loss became {loss} at {where}; stopped without saving this state — the "
            "last good checkpoint is kept (lower the learning rate or check the inputs)"
        )
