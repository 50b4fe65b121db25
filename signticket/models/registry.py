"""Name -> constructor registry: ``get("resnet20", num_classes=10, width=4)``.

Constructors take ``num_classes`` plus model-specific keywords; :func:`get` checks the keywords
against the constructor's signature first, so a typo in a config's ``model.kwargs`` fails with
the model's name and accepted keywords instead of deep inside a dataclass.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import flax.linen as nn

from signticket.errors import UserError
from signticket.models.convnet import ConvNet
from signticket.models.efficientnet import efficientnet_b0
from signticket.models.mlp import MLP
from signticket.models.mlp_mixer import mlp_mixer
from signticket.models.mobilenet_v2 import MobileNetV2
from signticket.models.mobilenet_v2_imagenet import mobilenet_v2_imagenet
from signticket.models.resnet_cifar import resnet18, resnet20, resnet20_rebasin
from signticket.models.resnet_imagenet import resnet50, resnet50_cifar, resnet50_wide
from signticket.models.shufflenet import shufflenet
from signticket.models.vgg import vgg11, vgg11_nofc, vgg16

Constructor = Callable[..., nn.Module]
C = TypeVar("C", bound=Constructor)

_REGISTRY: dict[str, Constructor] = {}


def register(name: str, *, overwrite: bool = False) -> Callable[[C], C]:
    """Decorator adding a constructor (a function or an ``nn.Module`` class) under ``name``.

    The constructor is called as ``fn(num_classes=..., **kwargs)``. Registering a taken name
    raises ``ValueError`` unless ``overwrite`` is set.
    """

    def decorator(fn: C) -> C:
        if name in _REGISTRY and not overwrite:
            raise UserError(f"model {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return decorator


def names() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def _accepted_keywords(fn: Constructor) -> list[str] | None:
    """Keyword names ``fn`` accepts, or ``None`` when it takes ``**kwargs`` (or is opaque)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    keyword_kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    # Flax's dataclass plumbing fields are not model options.
    return [p.name for p in params if p.kind in keyword_kinds and p.name not in ("parent", "name")]


def get(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """The model registered as ``name`` with ``num_classes`` outputs.

    Raises:
        ValueError: ``name`` is not registered.
        TypeError: a keyword is not accepted by that model.
    """
    if name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}; available: {', '.join(names())}")
    fn = _REGISTRY[name]
    accepted = _accepted_keywords(fn)
    if accepted is not None:
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            options = ", ".join(k for k in accepted if k != "num_classes") or "none"
            raise TypeError(
                f"model {name!r} got unknown keyword argument(s) {', '.join(map(repr, unknown))}"
                f"; accepted: {options}"
            )
    return fn(num_classes=num_classes, **kwargs)


@register("mlp")
def _mlp(
    num_classes: int = 10, widths: Sequence[int] = (128, 128, 128), batch_norm: bool = False
) -> MLP:
    return MLP(widths=tuple(widths), num_classes=num_classes, batch_norm=batch_norm)


@register("convnet")
def _convnet(num_classes: int = 10, channels: Sequence[int] = (16, 32, 64)) -> ConvNet:
    return ConvNet(channels=tuple(channels), num_classes=num_classes)


register("resnet20")(resnet20)
register("resnet20_rebasin")(resnet20_rebasin)  # sparse-rebasin's: 3x3 shortcuts
register("vgg11_nofc")(vgg11_nofc)  # sparse-rebasin's: conv biases, no BN, PyTorch init
register("resnet18")(resnet18)
register("resnet50")(resnet50)
# Official AWS CIFAR-100 / Tiny-ImageNet ResNet-50: 3x3/1 stem, no max-pool.
register("resnet50_cifar")(resnet50_cifar)
register("resnet50_wide")(resnet50_wide)


# One registry name per BN choice (no ``batch_norm`` keyword), so a run's model name alone says
# which variant it trained.
@register("vgg11")
def _vgg11(num_classes: int = 10) -> nn.Module:
    return vgg11(num_classes=num_classes, batch_norm=False)


@register("vgg16")
def _vgg16(num_classes: int = 10) -> nn.Module:
    return vgg16(num_classes=num_classes, batch_norm=False)


@register("vgg11_bn")
def _vgg11_bn(num_classes: int = 10) -> nn.Module:
    return vgg11(num_classes=num_classes, batch_norm=True)


@register("vgg16_bn")
def _vgg16_bn(num_classes: int = 10) -> nn.Module:
    return vgg16(num_classes=num_classes, batch_norm=True)


@register("mobilenet_v2")
def _mobilenet_v2(num_classes: int = 10, width_mult: float = 1.0) -> MobileNetV2:
    return MobileNetV2(width_mult=width_mult, num_classes=num_classes)


# The remaining architectures of the official AWS code (models/utils.py get_model): CIFAR-100 /
# Tiny-ImageNet EfficientNet-B0 and ShuffleNet, ImageNet MLP-Mixer and torchvision MobileNetV2.
register("efficientnet_b0")(efficientnet_b0)
register("shufflenet")(shufflenet)
register("mlp_mixer")(mlp_mixer)
register("mobilenet_v2_imagenet")(mobilenet_v2_imagenet)
