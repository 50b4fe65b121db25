"""``model.compute_dtype``: reachable from every config, part of a run's identity, and the
default spelled out or not is the same config (existing run directories keep their hashes)."""

import jax.numpy as jnp
import pytest
from conftest import synthetic_dataset
from ml_collections import ConfigDict

from signticket import config as config_lib
from signticket import runs
from signticket.checkpoint import config_hash
from signticket.configs import train as train_config
from signticket.experiments import suite


@pytest.mark.parametrize("table", sorted(suite.TABLES))
def test_every_reproduce_config_accepts_compute_dtype(table):
    path = suite.TABLES[table].config_file("paper")
    plain = suite.load_config(path)
    bf16 = suite.load_config(path, ["model.compute_dtype=bfloat16"])
    fp32 = suite.load_config(path, ["model.compute_dtype=float32"])
    assert bf16.model.compute_dtype == "bfloat16"
    assert config_hash(fp32) == config_hash(plain) != config_hash(bf16)
    assert runs.compute_dtype(bf16) == jnp.bfloat16 and runs.compute_dtype(plain) is None


def test_bad_compute_dtype_is_a_config_error():
    with pytest.raises(config_lib.ConfigError, match="compute_dtype"):
        config_lib.validate(config_lib.apply_overrides(train_config.get_config(),
                                                       ["model.compute_dtype=int8"]))


def test_train_run_builds_a_bfloat16_engine(tmp_path):
    cfg = config_lib.load(None, ["model.compute_dtype=bfloat16", "epochs=1", "batch_size=32"],
                          train_config.get_config())
    cfg.model.kwargs = ConfigDict({"channels": (4,)})
    result = runs.train_run(cfg, synthetic_dataset(), runs_root=tmp_path, progress=False)
    engines = [e for e in runs._ENGINES.values() if e.compute_dtype is not None]
    assert engines and engines[-1].compute_dtype == jnp.bfloat16
    assert result.state.params["head"]["kernel"].dtype == jnp.float32  # master weights fp32
