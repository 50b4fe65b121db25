"""PyTorch twins of our Flax models and the PyTorch train step the suite compares against.

:func:`from_flax` builds the torch model from a Flax module's own attributes, so the topology
is the same by construction: ``ConvNet`` (3x3 conv without bias -> BN -> ReLU -> 2x2 max-pool
except after the last stage -> global average pool -> linear), ``CifarResNet`` (BasicBlocks with
projection shortcuts = 1x1 conv + BN where the shape changes, no conv bias) and ``VGG`` (3x3
convs with bias when there is no BN, 2x2 max-pools, global average pool -> linear). BatchNorm is
``BatchNorm2d(eps=1e-5, momentum=0.1)`` (= Flax momentum 0.9), init Kaiming-normal (fan-in), as
in :mod:`signticket.models.layers`; the parameter count is checked equal to the Flax model's.

What :func:`measure_torch` times: one ``torch.optim.SGD(lr 0.05, momentum 0.9, weight decay
5e-4)`` step in fp32 eager mode — uint8 -> float normalization, forward, cross-entropy,
backward, update — on a fixed batch, ``torch.set_num_threads(os.cpu_count())``, optionally in
the ``channels_last`` memory format. Torch is imported lazily (an optional ``bench`` extra).

The suite runs the torch step in worker processes of its own (:mod:`bench.side_by_side`,
through :func:`torch_step`), so that no JAX/XLA thread pool shares the process with torch's;
``python -m bench.torch_models`` (:func:`main`) measures both layouts alone.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax

from bench import report, timing, workloads
from signticket import _host_malloc, models

#: The memory formats the torch step is measured in; the faster one is the baseline.
LAYOUTS = ("contiguous", "channels_last")
TORCH_MISSING = "torch not installed: pip install torch==2.13.0"


def torch_available() -> bool:
    """Whether ``import torch`` works."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _modules():
    import torch
    from torch import nn as tnn

    def conv(cin: int, cout: int, k: int, stride: int = 1, bias: bool = False) -> tnn.Conv2d:
        c = tnn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=bias)
        tnn.init.kaiming_normal_(c.weight, mode="fan_in", nonlinearity="relu")
        if bias:
            tnn.init.zeros_(c.bias)
        return c

    def bn(c: int) -> tnn.BatchNorm2d:
        return tnn.BatchNorm2d(c, eps=1e-5, momentum=0.1)

    def head(cin: int, n: int) -> tnn.Linear:
        lin = tnn.Linear(cin, n)
        tnn.init.kaiming_normal_(lin.weight, mode="fan_in", nonlinearity="relu")
        tnn.init.zeros_(lin.bias)
        return lin

    class ConvNet(tnn.Module):
        def __init__(self, in_ch: int, channels, num_classes: int):
            super().__init__()
            layers, c = [], in_ch
            for i, ch in enumerate(channels):
                layers += [conv(c, ch, 3), bn(ch), tnn.ReLU(inplace=True)]
                if i != len(channels) - 1:
                    layers.append(tnn.MaxPool2d(2, ceil_mode=True))
                c = ch
            self.features = tnn.Sequential(*layers)
            self.head = head(c, num_classes)

        def forward(self, x):
            return self.head(self.features(x).mean((2, 3)))

    class BasicBlock(tnn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.conv1, self.bn1 = conv(cin, cout, 3, stride), bn(cout)
            self.conv2, self.bn2 = conv(cout, cout, 3), bn(cout)
            self.shortcut = (
                tnn.Sequential(conv(cin, cout, 1, stride), bn(cout))
                if stride != 1 or cin != cout
                else tnn.Identity()
            )

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return torch.relu(y + self.shortcut(x))

    class CifarResNet(tnn.Module):
        def __init__(self, in_ch: int, stage_sizes, widths, num_classes: int):
            super().__init__()
            self.stem = tnn.Sequential(conv(in_ch, widths[0], 3), bn(widths[0]),
                                       tnn.ReLU(inplace=True))
            blocks, c = [], widths[0]
            for s, (n, w) in enumerate(zip(stage_sizes, widths, strict=True)):
                for b in range(n):
                    blocks.append(BasicBlock(c, w, 2 if s > 0 and b == 0 else 1))
                    c = w
            self.blocks = tnn.Sequential(*blocks)
            self.head = head(c, num_classes)

        def forward(self, x):
            return self.head(self.blocks(self.stem(x)).mean((2, 3)))

    class VGG(tnn.Module):
        def __init__(self, in_ch: int, cfg, batch_norm: bool, num_classes: int):
            super().__init__()
            layers, c = [], in_ch
            for item in cfg:
                if item == "M":
                    layers.append(tnn.MaxPool2d(2, ceil_mode=True))
                    continue
                layers.append(conv(c, int(item), 3, bias=not batch_norm))
                if batch_norm:
                    layers.append(bn(int(item)))
                layers.append(tnn.ReLU(inplace=True))
                c = int(item)
            self.features = tnn.Sequential(*layers)
            self.head = head(c, num_classes)

        def forward(self, x):
            return self.head(self.features(x).mean((2, 3)))

    return ConvNet, CifarResNet, VGG


def from_flax(module: nn.Module, in_channels: int):
    """The ``torch.nn.Module`` with the topology of the Flax ``module`` (ConvNet, CifarResNet
    or VGG from :mod:`signticket.models`)."""
    convnet, resnet, vgg = _modules()
    if isinstance(module, models.ConvNet):
        return convnet(in_channels, tuple(module.channels), module.num_classes)
    if isinstance(module, models.CifarResNet):
        widths = [w * module.width for w in module.widths]
        return resnet(in_channels, tuple(module.stage_sizes), widths, module.num_classes)
    if isinstance(module, models.VGG):
        return vgg(in_channels, tuple(module.cfg), module.batch_norm, module.num_classes)
    raise TypeError(f"no torch twin for {type(module).__name__}")


def measure_torch(
    workload: workloads.Workload,
    *,
    steps: int,
    repeats: int,
    channels_last: bool = False,
    flax_param_count: int | None = None,
) -> dict[str, Any]:
    """Images/s of the eager PyTorch SGD step on ``workload``'s model twin (see module doc).

    Raises ``ValueError`` if ``flax_param_count`` is given and differs from the torch model's.
    """
    step, setting = torch_step(workload, channels_last=channels_last,
                               flax_param_count=flax_param_count)
    return torch_figures(setting, timing.time_calls(step, repeats=repeats, number=steps))


def torch_step(
    workload: workloads.Workload, *, channels_last: bool = False,
    flax_param_count: int | None = None,
) -> tuple[Callable[[], Any], dict[str, Any]]:
    """``(step, setting)``: the ready-to-call eager PyTorch SGD step of :func:`measure_torch`
    (each call advances the model by one step on the fixed batch) and what it runs with."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    c = workload.image_shape[-1]
    model = from_flax(workload.model, c)
    n_params = sum(p.numel() for p in model.parameters())
    if flax_param_count is not None and n_params != flax_param_count:
        raise ValueError(f"torch twin of {workload.description} has {n_params} params, the Flax "
                         f"model {flax_param_count}: not the same architecture")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    batch = workloads.synthetic_batch(workload.batch, workload.image_shape)
    images = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).contiguous(memory_format=fmt)
    labels = torch.from_numpy(batch["label"]).long()
    mean = torch.full((1, c, 1, 1), 0.5)
    std = torch.full((1, c, 1, 1), 0.25)

    def step():
        x = (images.float() / 255.0 - mean) / std
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), labels)
        loss.backward()
        opt.step()
        return loss

    setting = {"torch_version": torch.__version__, "threads": torch.get_num_threads(),
               "host_malloc_defaults": _host_malloc.applied(), "channels_last": channels_last,
               "param_count": n_params, "batch_size": workload.batch}
    return step, setting


def torch_figures(setting: dict[str, Any], t: timing.Timing) -> dict[str, Any]:
    """The figures of a timed :func:`torch_step` (``t``: its timing, however taken)."""
    return {
        **setting,
        "img_per_s_median": round(t.rate(setting["batch_size"]), 1),
        "step_ms_median": round(1000 * t.median_s, 2),
        "timing": t.to_json(),
    }


def flax_param_count(workload: workloads.Workload) -> int:
    """The parameter count of ``workload``'s Flax model (shapes only, nothing computed)."""
    x = jax.ShapeDtypeStruct((1, *workload.image_shape), jax.numpy.float32)
    shapes = jax.eval_shape(lambda k, x, m=workload.model: m.init(k, x, train=False),
                            jax.random.PRNGKey(0), x)
    return workloads.param_count(shapes["params"])


def measure_workloads(names: list[str], tiny: bool) -> dict[str, Any]:
    """Both memory layouts of every train-step workload in ``names`` (param counts checked
    against the Flax models)."""
    out = {}
    for name in names:
        w = workloads.train_workload(name, tiny)
        steps, repeats = workloads.train_steps(name, tiny)
        count = flax_param_count(w)
        out[name] = {
            layout: measure_torch(w, steps=steps, repeats=repeats,
                                  channels_last=layout == "channels_last", flax_param_count=count)
            for layout in LAYOUTS
        }
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python -m bench.torch_models --only resnet20,convnet [--tiny] --out FILE``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", default="resnet20,convnet,vgg11")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--out", default="bench/results/torch_baselines.json")
    args = p.parse_args(argv)
    result = measure_workloads([n for n in args.only.split(",") if n], args.tiny)
    report.write_result(result, args.out)
    for name, variants in result.items():
        for layout, r in variants.items():
            print(f"{name:<10} {layout:<14} {r['img_per_s_median']:>10} img/s")
    return result


if __name__ == "__main__":
    main()
