"""Typed run descriptions (``signticket.run_desc``): a run's identity includes every input it
starts from, with its parents' identities, and a run directory is never reused for inputs
other than the ones it was started from."""

import itertools
import json

import jax
import numpy as np
import pytest
from conftest import synthetic_dataset
from ml_collections import ConfigDict

from signticket import lottery
from signticket.checkpoint import CheckpointError, config_hash, run_identity
from signticket.errors import UserError
from signticket.masks import full_mask
from signticket.run_desc import Input, RunDesc, sketch
from signticket.runs import initial_variables, train_run


def _config(seed=0):
    return ConfigDict({
        "seed": seed, "data_seed": 0, "model": {"name": "mlp", "kwargs": {"widths": (8,)}},
        "data": {"name": "synthetic", "train_subset": 0, "test_subset": 0},
        "optimizer": {"name": "sgd", "learning_rate": 0.05, "momentum": 0.9,
                      "weight_decay": 0.0, "schedule": "constant", "warmup_epochs": 0},
        "batch_size": 16, "epochs": 1,
    })


def _init(seed):
    return initial_variables(_config(seed), synthetic_dataset(n=64, n_test=32))


def test_a_bare_array_cannot_be_passed_without_its_source():
    params = _init(0)["params"]
    with pytest.raises(UserError, match=r"RunDesc.init_params got a bare dict; wrap it as Input"):
        RunDesc(_config(), init_params=params)
    with pytest.raises(UserError, match="non-empty source"):
        Input(params, "  ")


def test_identity_is_the_config_plus_every_source_and_the_hook():
    params = _init(0)["params"]
    bare = RunDesc(_config())
    assert bare.identity() == run_identity(_config())  # no inputs: the config's own hash
    assert bare.hashname == f"train-{config_hash(run_identity(_config()))}"
    a = RunDesc(_config(), init_params=Input(params, "sign_transfer(imp-r03-aaaa)"))
    b = RunDesc(_config(), init_params=Input(params, "sign_transfer(imp-r03-bbbb)"))
    assert a.identity()["inputs"] == {"init_params": "sign_transfer(imp-r03-aaaa)"}
    assert a.hashname != b.hashname != bare.hashname
    hooked = RunDesc(_config(), pre_forward=lottery.aws_pre_forward())
    assert "aws_pre_forward" in hooked.identity()["pre_forward"]
    assert hooked.hashname != bare.hashname


def test_a_directory_is_never_reused_for_other_inputs_under_the_same_source(tmp_path):
    """The bug class this guards: a source string that leaves an input out (here: it forgot the
    init seed) would silently reuse the finished run; now the reuse fails, naming the input."""
    ds = synthetic_dataset(n=64, n_test=32)
    first = _init(0)
    desc = RunDesc(_config(), init_params=Input(first["params"], "init"),
                   init_batch_stats=Input(first["batch_stats"], "init"))
    done = train_run(desc, ds, runs_root=tmp_path, progress=False)
    stored = json.loads((done.directory / "inputs.json").read_text())
    assert set(stored) == {"init_params", "init_batch_stats"}
    other = _init(1)
    wrong = RunDesc(_config(), init_params=Input(other["params"], "init"),
                    init_batch_stats=Input(other["batch_stats"], "init"))
    assert wrong.hashname == desc.hashname
    with pytest.raises(CheckpointError, match=r"different init_params .* source 'init'"):
        train_run(wrong, ds, runs_root=tmp_path, progress=False)
    # The same inputs recomputed with rounding noise (another machine's last bits) still reuse.
    noisy = jax.tree.map(lambda x: x * (1 + 1e-7), first["params"])
    again = train_run(RunDesc(_config(), init_params=Input(noisy, "init"),
                              init_batch_stats=Input(first["batch_stats"], "init")),
                      ds, runs_root=tmp_path, progress=False)
    assert again.directory == done.directory
    assert again.summary == done.summary


def test_sketch_separates_masks_with_equal_counts():
    """A permuted mask keeps every count; the sketch still tells it apart (the permuted-masks
    pipeline's naive and permuted runs differ only that way)."""
    mask = np.zeros((16, 16), bool)
    mask[:4] = True
    permuted = mask[::-1]
    assert sketch(mask)[0]["nonzero"] == sketch(permuted)[0]["nonzero"]
    assert sketch(mask)[0]["projection"] != sketch(permuted)[0]["projection"]


def test_rounds_and_final_runs_name_their_parents(tmp_path):
    ds = synthetic_dataset(n=64, n_test=32)
    config = _config()
    config.aws = True
    config.imp = ConfigDict({"mode": "constant", "warmup_epochs": 1, "rounds": 2,
                             "epochs_per_round": 1, "fraction": 0.5, "scope": "global",
                             "rewind_epoch": 0})
    config.final = ConfigDict({"epochs": 1, "optimizer": config.optimizer.to_dict()})
    rounds = lottery.imp(config, ds, runs_root=tmp_path, progress=False)

    def identity(directory):
        return json.loads((directory / "config.json").read_text())

    warm = identity(rounds[0].directory)
    assert warm["inputs"]["init_params"] == "init(seed 0)"
    assert "aws_pre_forward" in warm["pre_forward"]
    for parent, child in itertools.pairwise(rounds):
        sources = identity(child.directory)["inputs"]
        assert {"init_params", "init_batch_stats", "mask", "hook_state"} == set(sources)
        assert all(parent.directory.name in sources[k]
                   for k in ("init_params", "init_batch_stats", "mask"))
    final = lottery.final_run("sign_transfer", rounds[2], config, ds, init_seed=7,
                              runs_root=tmp_path, progress=False)
    sources = identity(final.directory)["inputs"]
    assert sources["init_params"] == f"sign_transfer({rounds[2].directory.name}, init seed 7)"
    assert final.directory.name.startswith(f"final-sign_transfer-{rounds[2].name}-")
    # A parent retrained differently is another parent: the child gets another directory.
    other = lottery.Round(2, tmp_path / "elsewhere-r02-0", rounds[2].params,
                          rounds[2].batch_stats, rounds[2].mask, {}, name=rounds[2].name)
    moved = lottery.final_run("sign_transfer", other, config, ds, init_seed=7,
                              runs_root=tmp_path, progress=False)
    assert moved.directory != final.directory


def test_hand_built_round_without_a_name_still_runs(tmp_path):
    ds = synthetic_dataset(n=64, n_test=32)
    config = _config()
    config.final = ConfigDict({"epochs": 1, "optimizer": config.optimizer.to_dict()})
    fresh = _init(0)
    round0 = lottery.Round(0, None, fresh["params"], fresh["batch_stats"],
                           full_mask(fresh["params"]), {})
    res = lottery.final_run("retrain", round0, config, ds, init_seed=1, runs_root=tmp_path,
                            progress=False)
    assert res.directory.name.startswith("final-retrain-")
    assert json.loads((res.directory / "config.json").read_text())["inputs"]["mask"] == (
        "retrain(none)")
