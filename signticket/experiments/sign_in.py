"""Sign-In ("Sign-In to the Lottery", Gadhikar, Jacobs, Zhou, Burkholz, NeurIPS 2025): sparse
training from scratch with random masks, with and without the ``theta = m * w``
reparameterisation and its scaling resets; RiGL (per step) and AC/DC with and without Sign-In;
controls (2λ decay) and a grid over p and beta relative to the weight scale. The recipe and the
source of every default: ``docs/protocols/sign_in.md``.

    python -m signticket.experiments.sign_in \
        --config signticket/experiments/configs/sign_in_cpu.py [--config.key=value]

For every seed and sparsity all arms share the init, the random mask and the data order, so
their differences are paired (the table gives the mean ± std of the paired differences too).
Every arm is a resumable config-hashed ``runs.train_run``; per-epoch sign metrics are written to
``sign_metrics.jsonl`` in its run directory (flips vs init and cumulative epoch-to-epoch flips
per layer, mean ``m^2 - w^2`` per layer) and the final top Hessian eigenvalue to
``final_metrics.json``; params and masks after ``experiment.snapshot_epochs`` (for
``experiments.sign_alignment``). Writes ``table.md``/``.csv``, ``results.json`` and per-layer
sign-flip plots to ``--out`` (with ``experiment.single_neuron``, the single-neuron mechanism
demonstration above the table).
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict

from signticket import data as data_lib
from signticket.acdc import acdc, acdc_phases
from signticket.checkpoint import write_json_atomic
from signticket.curvature import top_hessian_eigenvalue
from signticket.errors import UserError
from signticket.experiments.cli_common import experiment_main
from signticket.experiments.common import progress_lines, pyplot, run_seeds, save_figure
from signticket.experiments.tables import mean_std, paired_differences, paper_columns, write_table
from signticket.masks import apply_mask
from signticket.optim import get_mask, sign_in
from signticket.rigl import rigl
from signticket.run_desc import Input, RunDesc
from signticket.runs import (
    build_model,
    build_optimizer,
    check_run_config,
    enable_compilation_cache,
    initial_variables,
    load_dataset,
    train_run,
)
from signticket.schedules import make_schedule
from signticket.sign_in import relative_balance
from signticket.sign_metrics import balance_per_layer, cumulative_flips, flip_tracker, track_flips
from signticket.signs import sign_flips
from signticket.str_sparsity import initial_params as str_initial_params
from signticket.str_sparsity import sparsity as str_sparsity_of
from signticket.str_sparsity import str_sparsity
from signticket.train import cross_entropy
from signticket.tree import PyTree, copy_arrays, is_kernel, is_prunable, named_leaves

NAME = "sign_in"
TITLE = "Sign-In"

#: What each arm changes in ``config.method``.
ARMS: dict[str, dict] = {
    "random": {},
    "sign_in": {"sign_in": True},
    "sign_in_p1": {"sign_in": True, "reset_epochs": 1},
    "sign_in_p5": {"sign_in": True, "reset_epochs": 5},
    "sign_in_no_reset": {"sign_in": True, "reset_epochs": 0},
    "sign_in_half_decay": {"sign_in": True, "mw_decay_scale": 0.5},
    "sign_in_momentum_reset": {"sign_in": True, "reset_momentum": True},
    # beta relative to each layer's weight scale (RMS at init), step at theta = 0 kept at SGD's
    "sign_in_rel1": {"sign_in": True, "beta_rel": 1.0, "normalize": True},
    "sign_in_rel03": {"sign_in": True, "beta_rel": 0.3, "normalize": True},
    "rigl": {"rigl": True},
    "rigl_sign_in": {"rigl": True, "sign_in": True},
    "acdc": {"acdc": True},
    "acdc_sign_in": {"acdc": True, "sign_in": True},
    "str": {"str": True},
    "str_sign_in": {"str": True, "sign_in": True},
    # λ/2 on m and on w: the decay on W = m w is then STR's own λ (λ on both is ~2λ on W)
    "str_sign_in_half_decay": {"str": True, "sign_in": True, "mw_decay_scale": 0.5},
    # controls: the baseline with twice its decay (what Sign-In's λ on m and on w is on theta)
    "random_wd2": {"decay_scale": 2.0},
    "rigl_wd2": {"rigl": True, "decay_scale": 2.0},
    "acdc_wd2": {"acdc": True, "decay_scale": 2.0},
}
LABELS = {
    "random": "random mask", "sign_in": "+ Sign-In", "sign_in_p1": "+ Sign-In (p = 1)",
    "sign_in_p5": "+ Sign-In (p = 5)", "sign_in_no_reset": "+ Sign-In, no resets",
    "sign_in_half_decay": "+ Sign-In, decay / 2",
    "sign_in_momentum_reset": "+ Sign-In, momentum zeroed at resets",
    "sign_in_rel1": "+ Sign-In, β = 1×RMS(layer), normalised",
    "sign_in_rel03": "+ Sign-In, β = 0.3×RMS(layer), normalised",
    "rigl": "RiGL", "rigl_sign_in": "RiGL + Sign-In", "acdc": "AC/DC",
    "acdc_sign_in": "AC/DC + Sign-In", "str": "STR", "str_sign_in": "STR + Sign-In",
    "str_sign_in_half_decay": "STR + Sign-In, decay / 2 on m, w",
    "random_wd2": "random mask, 2λ decay",
    "rigl_wd2": "RiGL, 2λ decay", "acdc_wd2": "AC/DC, 2λ decay",
}
#: Arms each dense-to-sparse / DST arm is paired with (its Δ column); the rest pair with random.
PAIRED_WITH = {"rigl_sign_in": "rigl", "acdc_sign_in": "acdc", "rigl_wd2": "rigl",
               "acdc_wd2": "acdc", "str_sign_in": "str",
               "str_sign_in_half_decay": "str"}

_SIGN_IN_KEYS = ("c", "reset_epochs", "reset_momentum", "mw_decay_scale", "beta_rel", "normalize")
_RIGL_KEYS = ("rigl_alpha", "rigl_delta_t", "rigl_end", "rigl_distribution")
_ACDC_KEYS = ("acdc_warmup", "acdc_phase", "acdc_final", "acdc_scope")
#: STR's settings (Kusupati et al. 2020): removed from every other arm's config, so configs
#: that carry them name the same RiGL / AC/DC / random runs as configs without them.
_STR_KEYS = ("str", "str_s_init", "str_weight_decay")


def arm_config(config: ConfigDict, arm: str, seed: int, sparsity: float) -> ConfigDict:
    """The run config of one arm: everything that changes its training, nothing else."""
    if arm not in ARMS:
        raise UserError(f"unknown arm {arm!r}; available: {', '.join(ARMS)}")
    c = ConfigDict(config.to_dict())
    del c["experiment"]
    c.seed, c.data_seed, c.mask.sparsity = seed, seed, float(sparsity)
    m = c.method
    for k, v in ARMS[arm].items():
        m[k] = v
    unused = []
    if not m.sign_in:
        unused += _SIGN_IN_KEYS
    elif m.reset_epochs == 0:
        unused.append("reset_momentum")
    if not m.get("rigl"):
        unused += _RIGL_KEYS
    if not m.get("acdc"):
        unused += _ACDC_KEYS
    for k in unused:  # None, so settings an arm does not use do not split its run directory
        if k in m:
            m[k] = None
    if not m.get("str"):
        for k in _STR_KEYS:
            if k in m:
                del m[k]
    if "rigl_every_epochs" in m:  # the former once-per-epoch RiGL; RiGL now runs per step
        m.rigl_every_epochs = None
    return c
# -- masks ---------------------------------------------------------------------------------------


def random_mask(key: jax.Array, params: PyTree, cfg: ConfigDict) -> PyTree:
    """Uniform random mask with the overall sparsity exact over the prunable layers, the
    ``cfg.capped`` (input) layers at most ``cfg.max_capped_sparsity`` sparse (the head is not
    prunable, so dense); or ERK."""
    from signticket import masks

    if cfg.distribution == "erk":
        return masks.random_mask(key, params, cfg.sparsity, "erk")
    if cfg.distribution != "uniform":
        raise UserError(f"mask.distribution must be 'uniform' or 'erk', got {cfg.distribution!r}")
    named = named_leaves(params)
    sizes = {n: int(np.prod(jnp.shape(x))) for n, x in named if is_prunable(n, x)}
    capped = {n for n in sizes if n in tuple(cfg.capped)}
    s_cap = min(cfg.sparsity, cfg.max_capped_sparsity)
    n_capped = sum(sizes[n] for n in capped)
    n_rest = sum(sizes.values()) - n_capped
    s_rest = (cfg.sparsity * (n_capped + n_rest) - s_cap * n_capped) / max(n_rest, 1)
    if not 0.0 <= s_rest < 1.0:
        raise UserError(f"sparsity {cfg.sparsity} is unreachable with the capped input layers")
    treedef = jax.tree.structure(params)
    out = []
    for i, (name, x) in enumerate(named):
        if name not in sizes:
            out.append(jnp.ones(jnp.shape(x), bool))
            continue
        keep = round((1 - (s_cap if name in capped else s_rest)) * sizes[name])
        perm = jax.random.permutation(jax.random.fold_in(key, i), sizes[name])
        out.append((perm < keep).reshape(jnp.shape(x)))
    return jax.tree.unflatten(treedef, out)


# -- optimizer -----------------------------------------------------------------------------------


def _schedule(cfg: ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    o, total = cfg.optimizer, max(1, cfg.epochs * steps_per_epoch)
    return make_schedule(o.schedule, o.learning_rate, total, milestones=tuple(o.milestones),
                         gamma=o.gamma,
                         warmup_steps=min(total - 1, o.warmup_epochs * steps_per_epoch))


def make_tx(cfg: ConfigDict, steps_per_epoch: int, latent: PyTree | None = None
            ) -> optax.GradientTransformation:
    """The baseline's ``masked(sgd)`` or Sign-In over the same SGD and schedule, wrapped in
    RiGL (per step) or AC/DC when the arm uses them, or STR (:func:`str_tx`; ``latent``: its
    dense init). Sign-In owns the decay: ``λ`` on biases / norms, ``mw_decay_scale * λ`` on
    ``m`` and on ``w``."""
    m = cfg.method
    if m.get("str"):
        return str_tx(cfg, steps_per_epoch, latent)
    if not m.sign_in:
        o = cfg.optimizer
        if m.get("decay_scale"):
            o = ConfigDict({**o.to_dict(), "weight_decay": o.weight_decay * m.decay_scale})
        tx = build_optimizer(o, cfg.epochs, steps_per_epoch)
    else:
        tx = _sign_in_tx(cfg, steps_per_epoch, cfg.optimizer.weight_decay,
                         cfg.optimizer.weight_decay * m.mw_decay_scale)
    total = max(1, cfg.epochs * steps_per_epoch)
    if m.get("rigl"):
        tx = rigl(tx, delta_t=m.rigl_delta_t, end_step=max(1, round(m.rigl_end * total)),
                  alpha=m.rigl_alpha)
    if m.get("acdc"):
        tx = acdc(tx, sparsity=cfg.mask.sparsity, steps_per_epoch=steps_per_epoch,
                  sparse_epochs=acdc_phases(cfg.epochs, m.acdc_warmup, m.acdc_phase,
                                            m.acdc_final),
                  scope=m.acdc_scope)
    return tx


def _sign_in_tx(cfg: ConfigDict, steps_per_epoch: int, decay: float, mw_decay: float
                ) -> optax.GradientTransformation:
    """Sign-In over SGD with the config's schedule: ``decay`` on plain leaves, ``mw_decay`` on
    ``m`` and on ``w``."""
    m, o = cfg.method, cfg.optimizer
    beta = relative_balance(m.beta_rel) if m.get("beta_rel") else m.c
    return sign_in(
        optax.sgd(_schedule(cfg, steps_per_epoch), momentum=o.momentum or None), reset_every=(
            m.reset_epochs * steps_per_epoch if m.reset_epochs else None),
        c=beta, reset_momentum=bool(m.reset_momentum), weight_decay=decay,
        mw_weight_decay=mw_decay, normalize=bool(m.get("normalize")),
    )


def str_tx(cfg: ConfigDict, steps_per_epoch: int, latent: PyTree | None
           ) -> optax.GradientTransformation:
    """STR (``signticket.str_sparsity``) with one decay ``λ = method.str_weight_decay`` on every
    parameter, the thresholds included (official RAIVNLab/STR main.py ``get_optimizer``; it
    replaces ``optimizer.weight_decay``), over SGD with the config's schedule, or over Sign-In
    (``W = m * w``): then Sign-In owns the decay, λ on ``m`` and on ``w`` (``mw_decay_scale *
    λ``) as it would be on every PyTorch parameter, and λ on ``s`` and the plain leaves; none on
    the product ``W``. Thresholded: the same layers as the other arms' masks (``is_prunable``:
    head dense)."""
    m, o = cfg.method, cfg.optimizer
    lam = float(m.str_weight_decay)
    if m.sign_in:
        inner = _sign_in_tx(cfg, steps_per_epoch, lam, lam * m.mw_decay_scale)
    else:
        inner = optax.sgd(_schedule(cfg, steps_per_epoch), momentum=o.momentum or None)
    return str_sparsity(inner, s_init=float(m.str_s_init), weight_decay=0.0 if m.sign_in else lam,
                        prunable=is_prunable, latent=latent)


def start_mask(key: jax.Array, params: PyTree, cfg: ConfigDict) -> PyTree:
    """The mask an arm starts from: dense for AC/DC and STR (they prune themselves), the config's
    random mask otherwise (RiGL: with its own distribution, ERK in the paper)."""
    from signticket import masks

    if cfg.method.get("acdc") or cfg.method.get("str"):
        return masks.full_mask(params)
    if cfg.method.get("rigl") and cfg.method.rigl_distribution:
        return random_mask(key, params, ConfigDict({**cfg.mask.to_dict(),
                                                    "distribution": cfg.method.rigl_distribution}))
    return random_mask(key, params, cfg.mask)


# -- per-epoch metrics ---------------------------------------------------------------------------


def _floats(stats) -> dict:
    return {"overall": float(stats.overall),
            "per_layer": {k: float(v) for k, v in stats.per_layer.items()}}


def _read_records(path: Path) -> list[dict]:
    """Per-epoch records; a resumed run rewrites an epoch, so the last record of it wins."""
    if not path.exists():
        return []
    by_epoch = {}
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut off by a kill
        by_epoch[r["epoch"]] = r
    return [by_epoch[e] for e in sorted(by_epoch)]


def snapshot_path(directory: Path, epoch: int) -> Path:
    """Where :func:`epoch_hook` keeps the params (and mask) after ``epoch`` (1-based count of
    finished epochs; the sign-alignment experiment reads them)."""
    return Path(directory) / f"params_epoch{epoch}.npz"


def save_snapshot(path: Path, params: PyTree, mask: PyTree) -> None:
    flat = {f"params/{n}": np.asarray(x) for n, x in named_leaves(params)}
    flat.update({f"mask/{n}": np.asarray(x) for n, x in named_leaves(mask)})
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **flat)
    tmp.replace(path)


def load_snapshot(path: Path, like: PyTree) -> tuple[PyTree, PyTree]:
    """``(params, mask)`` saved by :func:`save_snapshot`, in the structure of ``like``."""
    with np.load(path) as z:
        treedef = jax.tree.structure(like)
        names = [n for n, _ in named_leaves(like)]
        params = jax.tree.unflatten(treedef, [jnp.asarray(z[f"params/{n}"]) for n in names])
        mask = jax.tree.unflatten(treedef, [jnp.asarray(z[f"mask/{n}"]) for n in names])
    return params, mask


@functools.partial(jax.jit, static_argnums=0)
def _sign_stats(sign_in: bool, tracker, init_params, init_mask, params, mask, last_mask,
                opt_state) -> tuple[PyTree, dict]:
    """The epoch's flip tracker and sign statistics, as one program (op by op, their dozens of
    small per-layer ops each compiled on first use: seconds per run)."""
    both = lambda a, b: jax.tree.map(jnp.logical_and, a, b)
    tracker = track_flips(tracker, params, both(mask, last_mask))
    stats = {"flips_vs_init": sign_flips(init_params, params, both(mask, init_mask),
                                         where=is_kernel),
             "cumulative_flips": cumulative_flips(tracker, mask, where=is_kernel)}
    if sign_in:
        stats["balance"] = balance_per_layer(opt_state)
    return tracker, stats


def epoch_hook(path: Path, init_params: PyTree, init_mask: PyTree, cfg: ConfigDict,
               snapshots: tuple[Path, tuple[int, ...]] | None = None):
    """``on_epoch_end``: sign metrics appended to ``path`` (and params snapshots after the
    ``snapshots`` epochs). Flips count weights alive at both ends of the comparison (init and
    now; last epoch and now), so RiGL's / AC/DC's dropped and regrown weights are not flips. The
    flip tracker and the last epoch's mask live in ``state.hook_state``, so they are
    checkpointed with the run."""

    def hook(epoch, state):
        mask = get_mask(state.opt_state)
        if snapshots is not None and epoch in snapshots[1]:
            save_snapshot(snapshot_path(snapshots[0], epoch), state.params, mask)
        tracker, stats = _sign_stats(bool(cfg.method.sign_in), state.hook_state["flips"],
                                     init_params, init_mask, state.params, mask,
                                     state.hook_state["mask"], state.opt_state)
        # over every kernel, the dense head included
        record = {"epoch": epoch, **{k: _floats(v) for k, v in jax.device_get(stats).items()}}
        with path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        # (a copy: the step donates its state, and one buffer must not be donated twice)
        return state.replace(hook_state={"flips": tracker, "mask": copy_arrays(mask)})

    return hook


def hessian_sample(dataset, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` training examples the Hessian is taken on: the first ``n`` of an in-memory
    dataset; of a streamed one (ImageNet) a fixed ``train_sample`` (seed 0, resize + center
    crop), read through the source API so the split is never held in memory."""
    if isinstance(dataset, data_lib.Dataset):
        return dataset.train_images[:n], dataset.train_labels[:n]
    return data_lib.as_source(dataset).train_sample(n, seed=0)


def hessian_top(model, dataset, state, mask, n: int, iters: int) -> float:
    """Top eigenvalue of the Hessian of the loss on ``n`` fixed training examples
    (:func:`hessian_sample`; BN in eval mode), restricted to the unmasked weights."""
    images, labels = hessian_sample(dataset, n)
    x = dataset.preprocess(jnp.asarray(images), None, False)
    return float(_hessian_top(model, int(iters), state.params, state.batch_stats, mask, x,
                              jnp.asarray(labels)))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _hessian_top(model, iters: int, params, batch_stats, mask, x, y) -> jax.Array:
    # The sample and BN statistics are arguments, not constants folded into the program: one
    # compile serves every arm and seed (it was 4.4 s per call on the convnet).
    def loss(p):
        variables = {"params": p, **({"batch_stats": batch_stats} if batch_stats else {})}
        return cross_entropy(model.apply(variables, x, train=False), y).mean()

    return top_hessian_eigenvalue(loss, params, jax.random.PRNGKey(0), mask=mask,
                                  num_iters=iters).value


# -- one arm -------------------------------------------------------------------------------------


def run_arm(config: ConfigDict, arm: str, seed: int, sparsity: float, dataset, runs_root,
            progress: bool) -> dict:
    cfg = arm_config(config, arm, seed, sparsity)
    exp = config.experiment
    name = f"sign_in-{arm}"
    check_run_config(cfg, runs_root)  # before any directory exists
    variables = initial_variables(cfg, dataset)
    mask = start_mask(jax.random.PRNGKey(10_000 + seed), variables["params"], cfg)
    init = apply_mask(variables["params"], mask)
    is_str = bool(cfg.method.get("str"))
    if is_str:  # the model starts at the thresholded init; STR keeps the dense one as latent W
        init = str_initial_params(variables["params"], cfg.method.str_s_init, is_prunable)
    steps = data_lib.train_steps(dataset, cfg.batch_size)
    model = build_model(cfg.model, dataset.num_classes)
    # Init, mask and optimizer all follow from the arm's config (seed, method, sparsity).
    recipe = f"arm_config({arm}, seed {seed}, sparsity {sparsity})"
    desc = RunDesc(cfg, name=name, init_params=Input(init, f"init * start_mask of {recipe}"),
                   init_batch_stats=Input(variables["batch_stats"], f"init of {recipe}"),
                   # STR derives its mask from W and s
                   mask=None if is_str else Input(mask, f"start_mask of {recipe}"),
                   tx=Input(make_tx(cfg, steps, latent=variables["params"] if is_str else None),
                            f"make_tx of {recipe}"),
                   hook_state=Input({"flips": flip_tracker(init), "mask": mask},
                                    "flip tracker (zero) and start mask"))
    directory = desc.directory(runs_root)
    hook = epoch_hook(directory / "sign_metrics.jsonl", init, mask, cfg,
                      snapshots=(directory, tuple(exp.get("snapshot_epochs", ()))))
    result = train_run(desc, dataset, runs_root=runs_root, on_epoch_end=hook,
                       progress=progress)
    final_path = directory / "final_metrics.json"
    if final_path.exists():
        final = json.loads(final_path.read_text())
    else:
        final_mask = get_mask(result.state.opt_state)
        final = {"hessian_top": hessian_top(model, dataset, result.state, final_mask,
                                            exp.hessian_batch, exp.hessian_iters)}
        if is_str:  # the sparsity STR reached (its target is only implied by s_init and λ)
            overall, per_layer, thresholds = str_sparsity_of(result.state.opt_state)
            final.update(str_sparsity=overall, str_sparsity_per_layer=per_layer,
                         str_thresholds=thresholds)
        write_json_atomic(final_path, final)
    records = _read_records(directory / "sign_metrics.jsonl")
    return {"arm": arm, "seed": seed, "sparsity": sparsity, "dir": str(directory),
            "test_accuracy": result.summary["test_accuracy"], **final,
            "last": records[-1] if records else None, "records": records}


# -- table and plots -----------------------------------------------------------------------------


def _pct(s: float) -> str:
    return f"{round(100 * s)}"


def accuracies(results: list[dict], sparsity: float, arm: str) -> dict[int, float]:
    """``{seed: test accuracy}`` of one arm at one sparsity."""
    return {r["seed"]: r["test_accuracy"] for r in results
            if r["sparsity"] == sparsity and r["arm"] == arm}


def delta_cell(results: list[dict], sparsity: float, arm: str) -> str:
    """The arm's paired difference to the arm it is compared with (:data:`PAIRED_WITH`,
    random otherwise); ``"—"`` for the arms the others are compared with."""
    if arm in ("random", "rigl", "acdc", "str"):
        return "—"
    ref = PAIRED_WITH.get(arm, "random")
    delta = paired_differences(accuracies(results, sparsity, arm),
                               accuracies(results, sparsity, ref))
    return mean_std(list(delta.values()), 100) + (f" (vs {LABELS[ref]})" if ref != "random"
                                                 else "")


def arm_row(results: list[dict], sparsity: float, arm: str) -> list[str]:
    """Accuracy, Δ, sign flips, mean ``m^2 - w^2`` and ``λ_max`` of one arm at one sparsity."""
    rs = [r for r in results if r["sparsity"] == sparsity and r["arm"] == arm]
    last = [r["last"] for r in rs if r["last"]]
    return [f"{_pct(sparsity)} %", LABELS[arm],
            mean_std([r["test_accuracy"] for r in rs], 100),
            delta_cell(results, sparsity, arm),
            mean_std([x["flips_vs_init"]["overall"] for x in last], 100),
            mean_std([x["cumulative_flips"]["overall"] for x in last], 1, 3),
            mean_std([np.mean([x["balance"]["overall"] for x in r["records"]])
                      for r in rs if r["records"] and "balance" in r["records"][0]], 1, 3),
            mean_std([r["hessian_top"] for r in rs], 1, 1)]


def make_table(config: ConfigDict, results: list[dict], out: Path, title: str) -> str:
    exp = config.experiment
    paper = exp.paper.to_dict()
    header = ["sparsity", "arm", "test acc (%)", "Δ vs random (paired)", "flips vs init (%)",
              "cum. flips / weight", "m²-w² (epoch avg)", "λ_max(H)"]
    if paper:
        header += ["paper acc (%)", "ours − paper"]
    # STR's sparsity is reached, not set (s_init and λ imply it): shown where an arm has it
    reached = any("str_sparsity" in r for r in results)
    if reached:
        header.append("sparsity reached (%)")
    rows = []
    for s in exp.sparsities:
        for arm in exp.arms:
            row = arm_row(results, s, arm)
            if reached:
                got = [r["str_sparsity"] for r in results
                       if r["sparsity"] == s and r["arm"] == arm and "str_sparsity" in r]
                row.append(mean_std(got, 100) if got else "—")
            if paper:
                row += paper_columns(list(accuracies(results, s, arm).values()),
                                     paper.get(arm, {}).get(_pct(s)))
            rows.append(row)
    return write_table(out / "table", header, rows, title=title, notes=table_notes(config))


def table_notes(config: ConfigDict) -> str:
    exp, m = config.experiment, config.method
    return (f"{exp.note + '. ' if exp.note else ''}{config.model.name} on {config.data.name} "
            f"(train subset {config.data.train_subset or 'all'}, test subset "
            f"{config.data.test_subset or 'all'}), {config.epochs} epochs, SGD "
            f"lr {config.optimizer.learning_rate} momentum {config.optimizer.momentum} "
            f"{config.optimizer.schedule}, wd {config.optimizer.weight_decay}, batch "
            f"{config.batch_size}; {config.mask.distribution} random masks. Sign-In: c = {m.c}, "
            f"scaling reset every {m.reset_epochs} epochs (p = 5 arm: 5), momentum reset "
            f"{m.reset_momentum}; decay λ on m and on w (\"decay / 2\": λ/2). Mean ± std over "
            f"seeds {list(exp.seeds)}; Δ: paired per seed (same init, mask, data order). "
            f"Flips: fraction of unmasked kernel weights (head included) whose sign differs "
            f"from init at the "
            f"end; cumulative: epoch-to-epoch zero crossings per weight. m²-w²: mean over "
            f"unmasked weights at the end of each epoch, averaged over epochs (it is c right "
            f"after a reset). λ_max: top Hessian "
            f"eigenvalue of the final loss on {exp.hessian_batch} training examples "
            f"({exp.hessian_iters} power iterations, unmasked weights).")


def plot_flips(config: ConfigDict, results: list[dict], out: Path) -> list[Path]:
    """Per-layer sign flips vs init (final epoch), layers from input to output, one panel per
    sparsity, one line per arm (mean over seeds)."""
    plt = pyplot()
    paths = []
    for key, label in (("flips_vs_init", "flipped vs init (%)"),
                       ("cumulative_flips", "cum. sign changes / weight")):
        sp = config.experiment.sparsities
        fig, axes = plt.subplots(1, len(sp), figsize=(5 * len(sp), 3.6), squeeze=False)
        for ax, s in zip(axes[0], sp, strict=True):
            _flips_panel(ax, [r for r in results if r["sparsity"] == s and r["last"]],
                         config.experiment.arms, key)
            ax.set_title(f"{_pct(s)} % sparse")
            ax.set_ylabel(label)
            ax.legend(fontsize=7)
        paths.append(save_figure(fig, out / f"{key}_per_layer.png"))
    return paths


def _flips_panel(ax, results: list[dict], arms, key: str) -> None:
    """One line per arm: its mean over seeds of the final per-layer ``key``, layers on x."""
    layers: list[str] = []
    for arm in arms:
        rs = [r for r in results if r["arm"] == arm]
        if not rs:
            continue
        layers = _layer_order(rs[0]["last"][key]["per_layer"])
        vals = np.mean([[r["last"][key]["per_layer"][n] for n in layers] for r in rs], 0)
        scale = 100 if key == "flips_vs_init" else 1
        ax.plot(range(len(layers)), scale * vals, marker="o", label=LABELS[arm])
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels([n.removesuffix("/kernel") for n in layers], rotation=60, fontsize=7,
                       ha="right")


def plot_balance(config: ConfigDict, results: list[dict], out: Path) -> Path | None:
    """Mean ``m^2 - w^2`` at the end of every epoch (first seed), per Sign-In arm."""
    sp = config.experiment.sparsities
    fig, axes = pyplot().subplots(1, len(sp), figsize=(5 * len(sp), 3.2), squeeze=False)
    drawn = False
    for ax, s in zip(axes[0], sp, strict=True):
        for arm in config.experiment.arms:
            rs = [r for r in results if r["sparsity"] == s and r["arm"] == arm and r["records"]
                  and "balance" in r["records"][0]]
            if rs:
                recs = rs[0]["records"]
                ax.plot([x["epoch"] for x in recs], [x["balance"]["overall"] for x in recs],
                        marker="o", label=LABELS[arm])
                drawn = True
        ax.set_title(f"{_pct(s)} % sparse")
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean m²-w²")
        ax.legend(fontsize=7)
    path = save_figure(fig, out / "balance_over_epochs.png")
    return path if drawn else None


def _layer_order(per_layer: dict) -> list[str]:
    """Input to output: stems first, the head last, the rest in name order (conv0 < conv1,
    stage0 < stage1, ...)."""
    first = [n for n in per_layer if n.startswith(("stem", "conv0", "fc0"))]
    last = [n for n in per_layer if n.startswith("head")]
    return first + sorted(n for n in per_layer if n not in first + last) + last


def training_epochs(config: ConfigDict) -> float:
    """Epochs of training the whole experiment runs (for cost estimates)."""
    exp = config.experiment
    return len(exp.seeds) * len(exp.sparsities) * len(exp.arms) * config.epochs


def run(config: ConfigDict, args, out: Path) -> list[dict]:
    for arm in config.experiment.arms:
        if arm not in ARMS:
            raise SystemExit(f"unknown arm {arm!r} in experiment.arms; available: {list(ARMS)}")
    if config.experiment.compile_cache and not jax.config.jax_compilation_cache_dir:
        # Arms differ only in values (masks, seeds), so their programs are identical: compile
        # each once per machine instead of once per run. (The CLI has already enabled the
        # machine-wide cache, SIGNTICKET_JAX_CACHE; this is for callers that did not.)
        enable_compilation_cache()
    dataset = load_dataset(config.data, args.data_dir)
    announce = progress_lines(args.no_progress)

    def seed_arms(seed: int) -> list[dict]:
        arms = []
        for s in config.experiment.sparsities:
            for arm in config.experiment.arms:
                r = run_arm(config, arm, seed, s, dataset, args.runs_root, not args.no_progress)
                # one line per arm as it finishes: an arm takes minutes, a seed all of them
                announce(f"seed {seed} sparsity {s} {arm}: acc {r['test_accuracy']:.4f} "
                         f"lambda_max {r['hessian_top']:.2f}")
                arms.append(r)
        return arms

    return [r for arms in run_seeds(config.experiment.seeds, seed_arms) for r in arms]


def mechanism(out: Path, n: int = 100, steps: int = 2000) -> tuple[str, Path]:
    """The single-neuron demonstration of what Sign-In does (``experiments.single_neuron``;
    seconds): its table and figure, written to ``out/single_neuron``."""
    from signticket.experiments import single_neuron

    d = out / "single_neuron"
    d.mkdir(parents=True, exist_ok=True)
    res = single_neuron.run(n=n, steps=steps)
    md = single_neuron.table(res)
    (d / "table.md").write_text(md)
    return md, single_neuron.plot(res, d / "single_neuron.png")


def report(config: ConfigDict, results: list[dict], out: Path, title: str
           ) -> tuple[str, list[Path]]:
    figures = [*plot_flips(config, results, out), plot_balance(config, results, out)]
    md = make_table(config, results, out, title)
    if config.experiment.get("single_neuron"):
        # The mechanism beside the small table: at this scale the table alone can show no gain,
        # the single neuron shows which sign configurations Sign-In can and cannot repair.
        sn_md, sn_fig = mechanism(out)
        md = sn_md.replace("# Single neuron", "### Mechanism (single neuron)", 1) + "\n" + md
        figures.append(sn_fig)
    return md, [p for p in figures if p is not None]


def main(argv=None) -> int:
    return experiment_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
