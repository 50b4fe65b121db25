"""IMP with LRR / constant / weight rewinding / fine-tuning, AWS norm interpolation, ticket
starts."""

import itertools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import synthetic_dataset
from ml_collections import ConfigDict

from signticket import lottery, masks, models, tree


class TinyConv(nn.Module):
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(6, (3, 3), use_bias=False, name="conv0")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn0")(x)
        x = nn.relu(x).mean(axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)


class TwoWeights(nn.Module):
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.Dense(2, name="fc0")(x.mean(axis=(1, 2, 3))[:, None])
        return nn.Dense(self.num_classes, name="head")(h)


@pytest.fixture(autouse=True, scope="module")
def _test_models():
    """Register the tiny test models for this module only (other tests list the registry)."""
    from signticket.models import registry

    models.register("test_tinyconv", overwrite=True)(TinyConv)
    models.register("test_twoweights", overwrite=True)(TwoWeights)
    yield
    for name in ("test_tinyconv", "test_twoweights"):
        registry._REGISTRY.pop(name, None)


def _dataset(n=64):
    return synthetic_dataset(n, 32)


def _config(mode="constant", rounds=2, aws=False, model="test_tinyconv", **imp):
    return ConfigDict(
        {
            "seed": 0,
            "data_seed": 0,
            "batch_size": 16,
            "eval_every": 1,
            "checkpoint_every": 1,
            "model": {"name": model, "kwargs": {}},
            "data": {"name": "synthetic", "train_subset": 0, "test_subset": 0},
            "optimizer": {
                "name": "sgd",
                "learning_rate": 0.05,
                "momentum": 0.9,
                "weight_decay": 5e-4,
                "schedule": "cosine",
                "warmup_epochs": 0,
                "milestones": (0.5, 0.75),
                "gamma": 0.1,
            },
            "aws": aws,
            "imp": {
                "mode": mode,
                "warmup_epochs": 1,
                "rounds": rounds,
                "epochs_per_round": 1,
                "fraction": 0.2,
                "scope": "global",
                "rewind_epoch": 0,
                **imp,
            },
            "final": {
                "epochs": 1,
                "optimizer": {
                    "name": "sgd",
                    "learning_rate": 0.05,
                    "momentum": 0.9,
                    "weight_decay": 5e-4,
                    "schedule": "step",
                    "warmup_epochs": 0,
                    "milestones": (0.5, 0.75),
                    "gamma": 0.1,
                },
            },
        }
    )


def _params(seed):
    return TinyConv().init(jax.random.PRNGKey(seed), jnp.zeros((1, 8, 8, 1)))["params"]


class TestAWS(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_endpoints(self):
        p, p0 = _params(0), jax.tree.map(lambda x: x + 1.0, _params(1))
        f = self.variant(lottery.aws_interpolate)
        chex.assert_trees_all_equal(f(p, p0, 0.0), p)
        out = f(p, p0, 1.0)
        for (path, o), x, x0 in zip(
            tree.named_leaves(out), jax.tree.leaves(p), jax.tree.leaves(p0), strict=True
        ):
            chex.assert_trees_all_equal(o, x0 if tree.is_norm(path) else x)

    def test_gradients_reach_psi_through_psi_eff(self):
        p, p0 = _params(0), _params(1)
        alpha = 0.3

        def loss(params):
            eff = lottery.aws_interpolate(params, p0, alpha)
            return jnp.sum(eff["bn0"]["scale"] ** 2) + jnp.sum(eff["conv0"]["kernel"])

        g = jax.grad(loss)(p)
        eff = lottery.aws_interpolate(p, p0, alpha)
        chex.assert_trees_all_close(g["bn0"]["scale"], (1 - alpha) * 2 * eff["bn0"]["scale"])
        chex.assert_trees_all_close(g["conv0"]["kernel"], jnp.ones_like(p["conv0"]["kernel"]))

    def test_hook_draws_alpha_per_call(self):
        p, p0 = _params(0), jax.tree.map(lambda x: x + 1.0, _params(0))
        hook = jax.jit(lottery.aws_pre_forward())
        a = hook(p, {"psi_init": p0}, jax.random.PRNGKey(0))["bn0"]["scale"]
        b = hook(p, {"psi_init": p0}, jax.random.PRNGKey(1))["bn0"]["scale"]
        alpha_a = float(a[0] - p["bn0"]["scale"][0])
        assert 0.0 <= alpha_a < 1.0 and not np.allclose(a, b)


def _count(mask):
    return sum(int(jnp.sum(m)) for p, m in tree.named_leaves(mask) if tree.is_prunable(p))


@pytest.mark.parametrize(
    "mode,aws", [("constant", True), ("lrr", False), ("weight", False), ("ft", False)])
def test_rounds_keep_exactly_080_of_survivors(tmp_path, mode, aws):
    cfg = _config(mode, rounds=2, aws=aws)
    if mode == "ft":
        cfg.imp.ft_optimizer = ConfigDict(cfg.final.optimizer.to_dict())
    rounds = lottery.imp(cfg, _dataset(), runs_root=tmp_path, progress=False)
    counts = [_count(r.mask) for r in rounds]
    for before, after in itertools.pairwise(counts):
        assert after == before - round(0.2 * before)
    assert counts[1] < counts[0]


def _zero_outside(params, mask):
    return all(bool(jnp.all(jnp.where(m, True, x == 0)))
               for x, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask), strict=True))


@pytest.mark.parametrize("mode", ["constant", "weight"])
def test_round_k_is_trained_under_mask_k(tmp_path, mode):
    """The official train.py trains iteration k under mask k, saves checkpoint_iter{k}, then
    prunes. A round must carry its own mask and weights trained under it: zero outside the mask,
    the mask is the parent's magnitude prune, the weights moved after pruning, and the last
    density is trained (the off-by-one this replaced trained round k under mask k - 1)."""
    rounds = lottery.imp(_config(mode, rounds=3, aws=mode == "constant"), _dataset(),
                         runs_root=tmp_path, progress=False)
    assert [r.index for r in rounds] == [0, 1, 2, 3]
    assert rounds[-1].remaining == pytest.approx(_count(rounds[-1].mask) / _count(rounds[0].mask))
    for parent, r in itertools.pairwise(rounds):
        assert _zero_outside(r.params, r.mask)
        expected = lottery.prune_round(parent.params, parent.mask, 0.2)
        chex.assert_trees_all_equal(r.mask, expected)
        assert _count(r.mask) < _count(parent.mask)
        # trained under the new mask: the kept weights moved away from where pruning left them
        start = masks.apply_mask(parent.params, r.mask) if mode == "constant" else None
        if start is not None:
            moved = jax.tree.map(lambda a, b: jnp.any(a != b), r.params, start)
            assert any(bool(x) for x in jax.tree.leaves(moved))
        assert not _zero_outside(parent.params, r.mask)  # the parent was not trained under it


def test_official_count_rule_keeps_int_of_080_n():
    # utils/prune.py: topk(int(n * (1 - 0.2))) survivors; n = 12 keeps 9 (round-rule: 10)
    assert lottery.COUNT_RULES["official_aws"](12, 0.2) == 9
    assert lottery.COUNT_RULES["round"](12, 0.2) == 10
    assert lottery.COUNT_RULES["official_aws"](10, 0.2) == 8
    p = _params(0)
    full = masks.full_mask(p)
    n = _count(full)
    m = lottery.prune_round(p, full, 0.2, count_rule="official_aws")
    assert _count(m) == int(n * 0.8)
    kept = [np.abs(np.asarray(x))[np.asarray(mm)] for (path, x), mm in
            zip(tree.named_leaves(p), jax.tree.leaves(m), strict=True) if tree.is_prunable(path)]
    dropped = [np.abs(np.asarray(x))[~np.asarray(mm)] for (path, x), mm in
               zip(tree.named_leaves(p), jax.tree.leaves(m), strict=True)
               if tree.is_prunable(path)]
    assert np.concatenate(kept).min() >= np.concatenate(dropped).max()
    # the head is never scored or pruned
    assert bool(jnp.all(m["head"]["kernel"]))


def test_ticket_start_registry():
    assert {"retrain", "sign_transfer", "mask_transfer", "dense"} <= set(lottery.TICKET_STARTS)
    with pytest.raises(ValueError, match="already registered"):
        lottery.register_start("retrain")(lambda parent, fresh: None)
    with pytest.raises(ValueError, match="needs a pruning round"):
        lottery.transfer_init("sign_transfer", None, {"params": _params(0), "batch_stats": {}})
    assert "retrain" in lottery.NO_FRESH_INIT and "sign_transfer" not in lottery.NO_FRESH_INIT


def test_stage_configs_carry_logging_and_save_pace_outside_the_run_identity(tmp_path):
    from signticket.checkpoint import run_dir
    from signticket.experiments import composed
    from signticket.experiments.configs import composed_cpu
    from signticket.rebasin import procedure

    base = ConfigDict({"seed": 0, "data_seed": 0, "model": {"name": "mlp"}, "batch_size": 8,
                       "optimizer": {"name": "sgd"}})
    logged = ConfigDict({**base.to_dict(), "logging": {"writers": ("jsonl", "csv")},
                         "checkpoint_min_interval_s": 30.0})
    stage = lottery._stage_config(logged, "imp", round=0)
    # Every stage run writes them and saves at that pace ...
    assert tuple(stage.logging.writers) == ("jsonl", "csv")
    assert stage.checkpoint_min_interval_s == 30.0
    assert "logging" not in lottery._stage_config(base, "imp", round=0)
    # ... and the run directory is the same with or without them
    assert run_dir(tmp_path, stage) == run_dir(tmp_path, lottery._stage_config(base, "imp",
                                                                                round=0))
    sparse = procedure.stage_config(logged, "sparse", seed=0, optimizer=ConfigDict(),
                                    epochs=1, data_seed=0)
    assert tuple(sparse.logging.writers) == ("jsonl", "csv")
    assert sparse.checkpoint_min_interval_s == 30.0
    c = composed_cpu.get_config()
    c.logging = ConfigDict({"writers": ("jsonl",)})
    c.checkpoint_min_interval_s = 30.0
    for arm in (composed.aws_config(c, 0), composed.permuted_config(c)):
        assert "logging" in arm and arm.checkpoint_min_interval_s == 30.0


def test_killed_pipeline_resumes_at_its_round(tmp_path, monkeypatch):
    ds = _dataset()
    reference = lottery.imp(_config(rounds=3), ds, runs_root=tmp_path / "ref", progress=False)

    real, calls = lottery.train_run, []

    def killing(desc, dataset, **kw):
        calls.append(desc.name)
        if desc.name.endswith("r02") and calls.count(desc.name) == 1:
            raise KeyboardInterrupt
        return real(desc, dataset, **kw)

    monkeypatch.setattr(lottery, "train_run", killing)
    with pytest.raises(KeyboardInterrupt):
        lottery.imp(_config(rounds=3), ds, runs_root=tmp_path / "run", progress=False)
    r1_metrics = (next((tmp_path / "run").glob("*-r01-*")) / "metrics.jsonl").read_text()
    resumed = lottery.imp(_config(rounds=3), ds, runs_root=tmp_path / "run", progress=False)
    # round 1 was reused, not retrained; the result equals an uninterrupted pipeline
    assert (next((tmp_path / "run").glob("*-r01-*")) / "metrics.jsonl").read_text() == r1_metrics
    for a, b in zip(reference, resumed, strict=True):
        chex.assert_trees_all_equal(a.mask, b.mask)
        chex.assert_trees_all_close(a.params, b.params, atol=1e-6)


def test_more_rounds_reuse_earlier_rounds_and_changed_config_gets_new_dirs(tmp_path):
    ds = _dataset()
    short = lottery.imp(_config(rounds=1), ds, runs_root=tmp_path, progress=False)
    longer = lottery.imp(_config(rounds=2), ds, runs_root=tmp_path, progress=False)
    assert [r.directory for r in short] == [r.directory for r in longer[:2]]
    cfg = _config(rounds=1)
    cfg.optimizer.learning_rate = 0.06
    other = lottery.imp(cfg, ds, runs_root=tmp_path, progress=False)
    assert not {r.directory for r in other} & {r.directory for r in short}


def test_nothing_left_to_prune(tmp_path):
    with pytest.raises(ValueError, match="nothing left to prune"):
        lottery.imp(
            _config(rounds=1, model="test_twoweights"),
            _dataset(),
            runs_root=tmp_path,
            progress=False,
        )


def test_bad_imp_config(tmp_path):
    with pytest.raises(ValueError, match="unknown pruning mode"):
        lottery.imp(_config(mode="magic"), _dataset(), runs_root=tmp_path)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        lottery.imp(_config(fraction=1.0), _dataset(), runs_root=tmp_path)
    with pytest.raises(ValueError, match="rewind_epoch"):
        lottery.imp(_config(mode="weight", rewind_epoch=5), _dataset(), runs_root=tmp_path)


def test_transfer_inits():
    src_params, fresh_params = _params(0), _params(1)
    mask = masks.random_mask(jax.random.PRNGKey(0), src_params, 0.5)
    source = lottery.Round(3, None, src_params, {"bn0": {"mean": jnp.ones(6)}}, mask, {})
    params, stats, _m = lottery.transfer_init("signs_only", source, {
        "params": fresh_params, "batch_stats": {}})
    assert bool(jnp.all(jnp.abs(params["conv0"]["kernel"])
                        == jnp.abs(fresh_params["conv0"]["kernel"])))
    fresh = {"params": fresh_params, "batch_stats": {"bn0": {"mean": jnp.zeros(6)}}}
    params, stats, _m = lottery.transfer_init("sign_transfer", source, fresh)
    k, k0, ks = (
        params["conv0"]["kernel"],
        fresh_params["conv0"]["kernel"],
        src_params["conv0"]["kernel"],
    )
    km = mask["conv0"]["kernel"]
    assert bool(jnp.all(jnp.where(km, jnp.abs(k) == jnp.abs(k0), k == 0)))
    assert bool(jnp.all(jnp.where(km, jnp.sign(k) == jnp.sign(ks), True)))
    chex.assert_trees_all_equal(params["bn0"], fresh_params["bn0"])
    chex.assert_trees_all_equal(stats, fresh["batch_stats"])
    params, stats, _ = lottery.transfer_init("mask_transfer", source, fresh)
    chex.assert_trees_all_equal(params, masks.apply_mask(fresh_params, mask))
    params, stats, _ = lottery.transfer_init("retrain", source, fresh)
    chex.assert_trees_all_equal(params, masks.apply_mask(src_params, mask))
    with pytest.raises(ValueError, match="unknown transfer"):
        lottery.transfer_init("telepathy", source, fresh)


def _schedule_fixture():
    import json
    from pathlib import Path

    return json.loads((Path(__file__).parent / "fixtures" / "aws_schedules.json").read_text())


def test_torch_cosine_matches_the_official_imagenet_schedule():
    """optim/utils.py: CosineAnnealingLR(T_max=epochs, eta_min=lr * 0.001), stepped per epoch
    (lr of every epoch from torch in the fixture)."""
    from signticket.runs import build_schedule
    from signticket.schedules import torch_cosine

    fx = _schedule_fixture()["cosine_10"]
    steps = 7
    sched = torch_cosine(fx["base_lr"], fx["epochs"], steps, 0.001)
    # What a final run's optimizer config builds (runs.build_optimizer uses build_schedule).
    built = build_schedule(ConfigDict({"name": "adam", "learning_rate": fx["base_lr"],
                                       "weight_decay": 0.0, "schedule": "torch_cosine",
                                       "eta_min_ratio": 1e-3}), fx["epochs"], steps)
    for e, lr in enumerate(fx["lr_per_epoch"]):
        for s in (e * steps, e * steps + steps - 1):  # constant within the epoch
            assert float(sched(s)) == pytest.approx(lr, rel=1e-5)
            assert float(built(s)) == pytest.approx(lr, rel=1e-5)


@pytest.mark.parametrize("epochs", [10, 100])
def test_aws_config_step_schedule_is_the_official_multistep(epochs):
    """MultiStepLR(milestones=[epochs // 2, epochs // 4 * 3], gamma=0.1): for 10 epochs the
    second drop is at epoch 6, not 7.5."""
    from signticket.experiments.configs.aws_common import official_milestones
    from signticket.schedules import make_schedule

    fx = _schedule_fixture()[f"multistep_{epochs}"]
    steps = 3
    sched = make_schedule("step", fx["base_lr"], epochs * steps,
                          milestones=official_milestones(epochs))
    got = [float(sched(e * steps + s)) for e in range(epochs) for s in (0, steps - 1)]
    want = [lr for lr in fx["lr_per_epoch"] for _ in (0, 1)]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_round_policies_per_stage_optimizer():
    """train.py never steps the scheduler in the pruning stage and rebuilds the optimizer each
    iteration: the ``constant`` policy runs warm-up and rounds at the base LR; ``lrr`` restarts
    the configured schedule; ``ft`` uses imp.ft_optimizer; only ``weight`` rewinds."""
    cfg = _config("constant")
    cfg.imp.ft_optimizer = ConfigDict(cfg.final.optimizer.to_dict())
    pol = lottery.ROUND_POLICIES
    assert pol["constant"].optimizer(cfg).schedule == "constant"
    assert pol["constant"].warmup_optimizer(cfg).schedule == "constant"
    assert pol["lrr"].optimizer(cfg).schedule == cfg.optimizer.schedule == "cosine"
    assert pol["ft"].optimizer(cfg).schedule == "step"
    assert [n for n, p in pol.items() if p.rewinds] == ["weight"]
    with pytest.raises(ValueError, match="already registered"):
        lottery.register_policy(pol["lrr"])
    with pytest.raises(ValueError, match=r"unknown imp\.prunable"):
        lottery.imp(_config(prunable="everything"), _dataset(), runs_root="/nonexistent")


def test_imp_rounds_from_a_trained_network_with_an_exact_cut(tmp_path):
    """The reuse path for IMP after dense training (rebasin.procedure.imp_masks): any network
    as round 0, fine-tuning policy, a per-round count override."""
    ds = _dataset()
    cfg = _config("ft", rounds=2)
    cfg.imp.ft_optimizer = ConfigDict(cfg.final.optimizer.to_dict())
    init = lottery.initial_variables(cfg, ds)
    round0 = lottery.Round(0, None, init["params"], init["batch_stats"],
                           masks.full_mask(init["params"]), {})
    n0 = _count(round0.mask)
    rounds = list(lottery.imp_rounds(cfg, ds, round0, runs_root=tmp_path, progress=False,
                                     epochs=1, kept=lambda r, n: n - 7 * r))
    assert [_count(r.mask) for r in rounds] == [n0 - 7, n0 - 7 - 14]
    assert all(_zero_outside(r.params, r.mask) for r in rounds)
