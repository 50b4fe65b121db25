"""Run provenance: code version (git commit + dirty fingerprint, or the package version) and
package versions land in config.json (creator) and DONE.json (finisher) without changing the
run's hash; reusing a finished run made by other or unknown code says so once, as a warning."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from conftest import synthetic_dataset

from signticket import optim, provenance
from signticket.checkpoint import Checkpointer, CheckpointError, config_hash, run_dir
from signticket.fit import fit
from signticket.metrics import MetricsWriter
from signticket.sharding import make_mesh
from signticket.train import Engine

sys.path.insert(0, str(Path(__file__).parent))
from _engine_run import TinyNet

ROOT = Path(__file__).resolve().parents[1]


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    """A git checkout laid out like ours: <top>/signticket/__init__.py."""
    top = tmp_path / "checkout"
    (top / "signticket").mkdir(parents=True)
    (top / "signticket" / "__init__.py").write_text("x = 1\n")
    _git(top, "init", "-q")
    _git(top, "add", ".")
    _git(top, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    return top


def test_git_state_of_a_clean_dirty_and_untracked_checkout(repo):
    clean = provenance.git_state(repo)
    assert clean == {"commit": _git(repo, "rev-parse", "HEAD"), "dirty": False}
    (repo / "runs").mkdir()
    (repo / "runs" / "out.json").write_text("{}")  # results are not code
    assert provenance.git_state(repo) == clean
    (repo / "signticket" / "__init__.py").write_text("x = 2\n")
    one = provenance.git_state(repo)
    (repo / "signticket" / "__init__.py").write_text("x = 3\n")
    other = provenance.git_state(repo)
    assert one["dirty"] and other["dirty"] and one["commit"] == clean["commit"]
    assert one["diff"] != other["diff"]  # two different edits of one commit differ
    assert provenance.code_version_of(one, "0.1.0") == f"git:{clean['commit'][:12]}-dirty." \
                                                       f"{one['diff']}"


def test_no_checkout_or_a_foreign_checkout_falls_back_to_the_package_version(repo, tmp_path):
    plain = tmp_path / "site-packages"
    plain.mkdir()
    assert provenance.git_state(plain) is None
    # An installed copy inside another repository (a venv in a project) is not that project.
    assert provenance.git_state(repo / "signticket") is None
    assert provenance.code_version_of(None, "0.1.0") == "signticket 0.1.0"


def test_collect_names_this_checkout_and_the_packages():
    prov = provenance.collect()
    assert set(provenance.PACKAGES) <= set(prov["packages"])
    assert prov["packages"]["jax"] == jax.__version__
    assert prov["packages"]["signticket"]
    if (ROOT / ".git").exists():  # running from a checkout (a worktree has a .git file)
        assert prov["git"]["commit"] == _git(ROOT, "rev-parse", "HEAD")
        assert prov["code"].startswith(f"git:{prov['git']['commit'][:12]}")
    json.dumps(prov)  # stored as JSON


def test_config_json_holds_provenance_but_the_hash_ignores_it(tmp_path):
    cfg = {"seed": 0, "model": {"name": "mlp"}}
    d = run_dir(tmp_path, cfg, "train")
    assert d.name == f"train-{config_hash(cfg)}"
    stored = json.loads((d / "config.json").read_text())
    assert stored.pop(provenance.PROVENANCE_KEY) == provenance.collect()
    assert stored == cfg
    # A directory made by older code (no provenance) or other code is reused, not refused.
    (d / "config.json").write_text(json.dumps(cfg))
    assert run_dir(tmp_path, cfg, "train") == d
    (d / "config.json").write_text(json.dumps({**cfg, provenance.PROVENANCE_KEY: {"code": "x"}}))
    assert run_dir(tmp_path, cfg, "train") == d
    # Provenance never hides a different config.
    (d / "config.json").write_text(json.dumps({**cfg, "seed": 1,
                                               provenance.PROVENANCE_KEY: {"code": "x"}}))
    with pytest.raises(CheckpointError, match="different config"):
        run_dir(tmp_path, cfg, "train")


def _fit(directory, epochs=2):
    ds = synthetic_dataset(48, 16)
    engine = Engine(TinyNet(), optim.masked(optim.sgd(0.05, 0.9)), ds.preprocess, make_mesh())
    state = engine.init_state(jax.random.PRNGKey(0), ds.train_images)
    ckpt = Checkpointer(directory)
    try:
        return fit(engine, state, ds, epochs=epochs, batch_size=16, checkpointer=ckpt,
                   metrics=MetricsWriter(directory / "metrics.jsonl"), progress=False)
    finally:
        ckpt.close()


def _reuse_warnings(caplog, directory):
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="signticket.provenance"):
        _fit(directory)
    return [r.getMessage() for r in caplog.records if "reusing" in r.getMessage()]


def test_done_json_records_the_finishing_code_and_reuse_reports_other_code(tmp_path, caplog):
    d = tmp_path / "run"
    _, summary = _fit(d)
    done = json.loads((d / "DONE.json").read_text())
    assert done["provenance"] == provenance.collect()
    assert done["epoch"] == 2 and done["test_accuracy"] == pytest.approx(summary["test_accuracy"])
    assert _reuse_warnings(caplog, d) == []  # same code: silent

    ours = provenance.collect()["code"]
    (d / "DONE.json").write_text(json.dumps({**done, "provenance": {"code": "git:0123abcd"}}))
    (msg,) = _reuse_warnings(caplog, d)
    assert f"made by code git:0123abcd; this is {ours}" in msg and str(d) in msg

    old = {k: v for k, v in done.items() if k != "provenance"}  # a run of older code
    (d / "DONE.json").write_text(json.dumps(old))
    (msg,) = _reuse_warnings(caplog, d)
    assert "unknown version" in msg
    # Reused, not retrained: the summary is the stored one and DONE.json is left as it was.
    assert json.loads((d / "DONE.json").read_text()) == old
