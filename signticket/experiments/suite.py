"""Every paper table as a named config, and the commands over them: ``list``, ``reproduce``,
``tables`` and ``quickstart`` (``signticket <command>``).

A table is an experiment module (``signticket.experiments.aws``, ``.permuted_masks``, ``.sign_in``,
``.composed``) plus a config file; its ``--scale cpu`` variant is a config on offline
Fashion-MNIST. Costs are estimates: training epochs counted from the config times a per-epoch
time (GPU: engine throughput measured on an NVIDIA H200 where there is one, else a rough guess;
CPU: measured on the 2-core development machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType

from ml_collections import ConfigDict

from signticket import config as config_lib
from signticket.errors import UserError
from signticket.experiments.cli_common import (
    EXPERIMENT_FILE,
    IncompleteResultsError,
    execute,
    load_results,
)
from signticket.phases import record_phases

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_RESULTS = Path("results")


@dataclasses.dataclass(frozen=True)
class Table:
    """One table of one paper: the experiment that makes it and its two configs."""

    name: str
    experiment: str  # module under signticket/experiments/
    paper: str  # which table of which paper
    config: str  # paper scale (configs/<config>.py)
    cpu_config: str  # the Fashion-MNIST variant

    def config_file(self, scale: str) -> Path:
        return CONFIG_DIR / f"{self.config if scale == 'paper' else self.cpu_config}.py"

    def module(self) -> ModuleType:
        return importlib.import_module(f"signticket.experiments.{self.experiment}")


TABLES: dict[str, Table] = {t.name: t for t in (
    Table("aws-cifar100-resnet50", "aws", "AWS (ICLR 2025), CIFAR-100 ResNet-50",
          "aws_cifar100_resnet50", "aws_cpu"),
    Table("aws-cifar100-mobilenetv2", "aws", "AWS (ICLR 2025), CIFAR-100 MobileNetV2",
          "aws_cifar100_mobilenetv2", "aws_cpu"),
    Table("aws-cifar100-efficientnet", "aws", "AWS (ICLR 2025), CIFAR-100 EfficientNet-B0",
          "aws_cifar100_efficientnet", "aws_cpu"),
    Table("aws-cifar100-shufflenet", "aws", "AWS (ICLR 2025), CIFAR-100 ShuffleNet",
          "aws_cifar100_shufflenet", "aws_cpu"),
    Table("aws-tiny-imagenet-resnet50", "aws", "AWS (ICLR 2025), Tiny-ImageNet ResNet-50",
          "aws_tiny_imagenet_resnet50", "aws_cpu"),
    Table("aws-tiny-imagenet-mobilenetv2", "aws", "AWS (ICLR 2025), Tiny-ImageNet MobileNetV2",
          "aws_tiny_imagenet_mobilenetv2", "aws_cpu"),
    Table("aws-tiny-imagenet-efficientnet", "aws",
          "AWS (ICLR 2025), Tiny-ImageNet EfficientNet-B0", "aws_tiny_imagenet_efficientnet",
          "aws_cpu"),
    Table("aws-tiny-imagenet-shufflenet", "aws", "AWS (ICLR 2025), Tiny-ImageNet ShuffleNet",
          "aws_tiny_imagenet_shufflenet", "aws_cpu"),
    Table("aws-imagenet-resnet50", "aws", "AWS (ICLR 2025), ImageNet ResNet-50",
          "aws_imagenet_resnet50", "aws_cpu"),
    Table("aws-imagenet-mobilenetv2", "aws", "AWS (ICLR 2025), ImageNet MobileNetV2",
          "aws_imagenet_mobilenetv2", "aws_cpu"),
    Table("aws-imagenet-mlpmixer", "aws", "AWS (ICLR 2025), ImageNet MLP-Mixer",
          "aws_imagenet_mlpmixer", "aws_cpu"),
    Table("permuted-cifar10-resnet20", "permuted_masks",
          "Permuted masks (ICML 2025), CIFAR-10 ResNet-20", "permuted_cifar10_resnet20",
          "permuted_fmnist_convnet"),
    Table("permuted-cifar100-resnet20", "permuted_masks",
          "Permuted masks (ICML 2025), CIFAR-100 ResNet-20", "permuted_cifar100_resnet20",
          "permuted_fmnist_convnet"),
    Table("permuted-cifar10-vgg11", "permuted_masks",
          "Permuted masks (ICML 2025), CIFAR-10 VGG-11", "permuted_cifar10_vgg11",
          "permuted_fmnist_mlp"),
    Table("sign-in-cifar10-resnet20", "sign_in", "Sign-In (NeurIPS 2025), CIFAR-10 ResNet-20",
          "sign_in_cifar10_resnet20", "sign_in_cpu"),
    Table("sign-in-cifar100-resnet18", "sign_in", "Sign-In (NeurIPS 2025), CIFAR-100 ResNet-18",
          "sign_in_cifar100_resnet18", "sign_in_cpu"),
    Table("composed", "composed", "none: compositions across the three papers",
          "composed_cpu", "composed_cpu"),
    Table("permuted-imagenet-resnet50", "permuted_masks",
          "Permuted masks (ICML 2025), ImageNet ResNet-50", "permuted_imagenet_resnet50",
          "permuted_fmnist_convnet"),
    Table("sign-in-imagenet-resnet50", "sign_in", "Sign-In (NeurIPS 2025), ImageNet ResNet-50",
          "sign_in_imagenet_resnet50", "sign_in_cpu"),
    Table("sign-in-imagenet-resnet50-dst", "sign_in",
          "Sign-In (NeurIPS 2025), ImageNet ResNet-50, AC/DC and RiGL ± Sign-In",
          "sign_in_imagenet_resnet50_dst", "sign_in_cpu_dst"),
)}

#: The quickstart: one reduced CPU config per paper (``configs/quickstart_*.py``).
QUICKSTART = (("aws", "quickstart_aws"), ("permuted_masks", "quickstart_permuted"),
              ("sign_in", "quickstart_sign_in"))

#: Measured engine throughput, images/s of the bare jitted train step (input pipeline,
#: evaluation and compilation excluded) on one NVIDIA H200 with this engine
#: (``bench/results/h200/*.json``): ResNet-50 224x224 batch 256, ResNet-20 32x32 batch 128.
#: The paper-scale estimates use the config's ``model.compute_dtype`` (default float32).
#: ``resnet20_rebasin`` (3x3 projection shortcuts, a few % more FLOPs) takes ResNet-20's rate.
H200_IMAGES_PER_SECOND = {
    ("resnet50", "imagenet2012"): {"bfloat16": 7126.0, "float32": 4101.0},
    ("resnet20", "cifar10"): {"bfloat16": 68977.0, "float32": 53043.0},
    ("resnet20", "cifar100"): {"bfloat16": 68977.0, "float32": 53043.0},
    ("resnet20_rebasin", "cifar10"): {"bfloat16": 68977.0, "float32": 53043.0},
    ("resnet20_rebasin", "cifar100"): {"bfloat16": 68977.0, "float32": 53043.0},
}
#: Not measured: rough single-GPU fp32 guesses, seconds per epoch (marked ``*`` by ``list``).
#: Tiny-ImageNet: twice CIFAR's images at 4x the pixels, so ~8x a CIFAR epoch of the same
#: model. ImageNet MobileNetV2 / MLP-Mixer (S/16-sized: ~4.4 GFLOPs): about ResNet-50's
#: measured epoch (312 s), the first bound by its input pipeline more than its FLOPs.
GPU_SECONDS_PER_EPOCH_GUESS = {
    ("resnet50", "cifar100"): 25.0, ("mobilenet_v2", "cifar100"): 15.0,
    ("resnet18", "cifar100"): 12.0, ("vgg11_bn", "cifar10"): 4.0, ("vgg11_nofc", "cifar10"): 4.0,
    ("resnet50_cifar", "cifar100"): 25.0, ("efficientnet_b0", "cifar100"): 20.0,
    ("shufflenet", "cifar100"): 12.0,
    ("resnet50_cifar", "tiny_imagenet"): 200.0, ("mobilenet_v2", "tiny_imagenet"): 120.0,
    ("efficientnet_b0", "tiny_imagenet"): 160.0, ("shufflenet", "tiny_imagenet"): 96.0,
    ("mobilenet_v2_imagenet", "imagenet2012"): 300.0, ("mlp_mixer", "imagenet2012"): 330.0,
    # ~4x ResNet-50's FLOPs: a quarter of its measured H200 fp32 rate (4101 img/s)
    ("resnet50_wide", "imagenet2012"): 1_281_167 / 1025.0,
}
# CPU figures are end-to-end rates measured here (2 cores, YNNPACK fusion on): whole
# pipelines' training images divided by their wall time, so evaluation, compilation and
# checkpoints are included (the bare train step is faster; see bench/).
CPU_IMAGES_PER_SECOND = {"mlp": 20000.0, "convnet": 600.0, "resnet20": 140.0}
TRAIN_SIZES = {"fashion_mnist": 60_000, "mnist": 60_000, "cifar10": 50_000, "cifar100": 50_000,
               "tiny_imagenet": 100_000, "imagenet2012": 1_281_167}


class UnknownTableError(UserError):
    """A table name that is not in :data:`TABLES`."""


def get_table(name: str) -> Table:
    if name not in TABLES:
        raise UnknownTableError(f"unknown table {name!r}; available: {', '.join(TABLES)}")
    return TABLES[name]


def load_config(path: Path, overrides: Sequence[str] = ()) -> ConfigDict:
    """The config file at ``path`` with ``key=value`` overrides, validated
    (:func:`signticket.config.validate`): a bad value fails before anything runs."""
    config = config_lib.apply_overrides(config_lib.load_config_file(str(path)), list(overrides))
    config_lib.validate(config)
    return config


def estimated_cost(table: Table, scale: str) -> str:
    """``"~N GPU-h"`` (paper scale) or ``"~N min"`` (CPU scale) from the config's epochs."""
    config = load_config(table.config_file(scale))
    epochs = table.module().training_epochs(config)
    model, data = config.model.name, config.data.name
    subset = config.data.get("train_subset", 0) or TRAIN_SIZES.get(data, 50_000)
    if scale == "paper":
        dtype = config.model.get("compute_dtype") or config_lib.DEFAULT_COMPUTE_DTYPE
        measured = H200_IMAGES_PER_SECOND.get((model, data), {}).get(dtype)
        if measured:
            return f"~{epochs * subset / measured / 3600:.0f} GPU-h"
        per_epoch = GPU_SECONDS_PER_EPOCH_GUESS.get((model, data))
        return f"~{epochs * per_epoch / 3600:.0f} GPU-h*" if per_epoch else "?"
    rate = CPU_IMAGES_PER_SECOND.get(model)
    return f"~{epochs * subset / rate / 60:.0f} min" if rate else "?"


def list_tables() -> str:
    lines = [f"{'table':<30} {'paper scale':>11} {'--scale cpu':>11}  what"]
    for t in TABLES.values():
        try:
            costs = f"{estimated_cost(t, 'paper'):>11} {estimated_cost(t, 'cpu'):>11}"
        except (config_lib.ConfigError, ImportError) as e:
            costs = f"{'unavailable':>23}  ({e})"
        lines.append(f"{t.name:<30} {costs}  {t.paper}")
    lines.append(
        "Costs: training epochs of the whole pipeline x an epoch time. GPU: one NVIDIA H200, "
        "engine throughput measured with this engine (bench/results/h200: ResNet-50 224px "
        "b256 4101 img/s fp32 / 7126 bf16; ResNet-20 32px b128 53043 / 68977), in the config's "
        "model.compute_dtype (default float32; --config.model.compute_dtype=bfloat16), input "
        "pipeline, evaluation and compilation excluded, so a lower bound; * = not measured, a "
        "rough single-GPU fp32 guess. CPU: end-to-end on this 2-core machine.")
    return "\n".join(lines)


def _args(runs_root: str, data_dir: str | None, progress: bool,
          table_only: bool = False) -> argparse.Namespace:
    return argparse.Namespace(runs_root=runs_root, data_dir=data_dir, no_progress=not progress,
                              table_only=table_only, seeds=None)


def reproduce(name: str, scale: str, overrides: Sequence[str], *, results: Path | str,
              runs_root: str, data_dir: str | None, progress: bool) -> tuple[str, list[Path]]:
    """Run one table's pipeline (finished runs are reused) and write its report."""
    from signticket.checkpoint import check_runs_root

    if scale not in ("paper", "cpu"):
        raise UserError(f"scale must be 'paper' or 'cpu', got {scale!r}")
    table = get_table(name)
    path = table.config_file(scale)
    config = load_config(path, overrides)
    check_runs_root(runs_root)
    results = Path(results)
    out = results / table.experiment / (name if scale == "paper" else f"{name}-cpu")
    args = _args(runs_root, data_dir, progress)
    from signticket.checkpoint import is_primary

    if not is_primary():
        # Multi-host: every process trains (its part of each batch); process 0 alone writes
        # the results, tables and figures.
        table.module().run(config, args, out)
        return "", []
    return execute(table.module(), config, args, out, str(path))


def regenerate_tables(results: Path) -> tuple[list[str], list[str]]:
    """Rewrite every table and figure under ``results`` from disk, and ``results/README.md``.

    Returns (markdown of every table, problems): directories without finished results are
    reported, not fatal."""
    sections, problems, index = [], [], []
    dirs = sorted({p.parent for p in results.rglob("*.json")
                   if p.name in (EXPERIMENT_FILE, "results.json")})
    for out in dirs:
        try:
            meta, res = load_results(out)
            module = importlib.import_module(f"signticket.experiments.{meta['experiment']}")
        except (IncompleteResultsError, ModuleNotFoundError, KeyError) as e:
            problems.append(str(e))
            continue
        title = f"{module.TITLE} — {out.relative_to(results)}"
        markdown, figures = module.report(ConfigDict(meta["config"]), res, out, title)
        sections.append(markdown)
        rel = out.relative_to(results)
        index.append(f"## {title}\n\nConfig: `{meta['config_file']}`. Tables: "
                     + ", ".join(f"[{p.name}]({rel / p.name})" for p in sorted(out.glob("*.md")))
                     + "\n\n" + "\n".join(f"![{f.stem}]({Path(f).relative_to(results)})"
                                          for f in figures) + "\n")
    if index:
        (results / "README.md").write_text(
            "# Results\n\nGenerated by `signticket tables` from the run directories; each "
            "section links its tables (markdown; CSV beside them) and shows its figures.\n\n"
            + "\n".join(index))
    return sections, problems


def quickstart(*, results: Path, runs_root: str, data_dir: str | None, progress: bool,
               overrides: Mapping[str, Sequence[str]] | None = None
               ) -> list[tuple[str, str, list[Path]]]:
    """The three papers at reduced CPU scale on offline Fashion-MNIST, one stage each.

    ``overrides`` maps an experiment name to ``key=value`` overrides of its quickstart config
    (the tests shrink the stages this way)."""
    from signticket.checkpoint import check_runs_root

    check_runs_root(runs_root)
    results = Path(results)
    done = []
    for i, (experiment, config_name) in enumerate(QUICKSTART, 1):
        module = importlib.import_module(f"signticket.experiments.{experiment}")
        path = CONFIG_DIR / f"{config_name}.py"
        print(f"\n=== quickstart {i}/{len(QUICKSTART)}: {module.TITLE} ({path.name}) ===",
              flush=True)
        config = load_config(path, (overrides or {}).get(experiment, ()))
        with record_phases() as seconds:
            markdown, figures = execute(module, config, _args(runs_root, data_dir, progress),
                                        results / experiment, str(path))
        print(f"[{module.TITLE}: {math.ceil(seconds.total)} s: {seconds.summary()}]",
              flush=True)
        done.append((module.TITLE, markdown, figures))
    return done
