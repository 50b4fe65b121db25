"""Command line: bad input gives one clear error (exit code 2) and no traceback."""

import pytest

from signticket import cli
from signticket import config as config_lib
from signticket.configs import train as train_config


def _run(capsys, *argv):
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def test_unknown_config_key(capsys, tmp_path):
    code, err = _run(capsys, "train", "--config.optimizer.lr=0.1", "--runs-root", str(tmp_path))
    assert code == 2 and "unknown config key 'optimizer.lr'" in err


def test_unknown_model(capsys, tmp_path):
    code, err = _run(
        capsys,
        "train",
        "--config.model.name='resnet9000'",
        "--config.epochs=1",
        "--runs-root",
        str(tmp_path),
    )
    assert code == 2 and "resnet9000" in err


def test_unknown_dataset(capsys, tmp_path):
    code, err = _run(capsys, "train", "--config.data.name='svhn'", "--runs-root", str(tmp_path))
    assert code == 2 and "svhn" in err and "fashion_mnist" in err


def test_config_file_with_unknown_key(capsys, tmp_path):
    f = tmp_path / "cfg.py"
    f.write_text(
        "from signticket.configs.train import get_config as base\n"
        "def get_config():\n    c = base()\n    c.learning_rate = 0.1\n    return c\n"
    )
    code, err = _run(capsys, "train", "--config", str(f), "--runs-root", str(tmp_path))
    assert code == 2 and "unknown config key 'learning_rate'" in err


def test_overrides_parse_literals():
    cfg = config_lib.apply_overrides(
        train_config.get_config(), ["epochs=3", "optimizer.learning_rate=1", "model.kwargs.width=2"]
    )
    assert cfg.epochs == 3 and cfg.optimizer.learning_rate == 1.0
    assert cfg.model.kwargs.width == 2
    with pytest.raises(config_lib.ConfigError, match="key=value"):
        config_lib.apply_overrides(cfg, ["epochs"])
