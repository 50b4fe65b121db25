"""Flax linen models with explicit, stable submodule names, and a registry to build them by name.

Every model is called as ``model.apply(variables, x, train=...)`` on float32 NHWC images and
returns logits from a top-level Dense named ``head``. Norm layers are named ``bn*`` / ``*_bn``
so :func:`signticket.tree.is_norm` recognizes them.
"""

from signticket.models.convnet import ConvNet
from signticket.models.mlp import MLP
from signticket.models.mobilenet_v2 import InvertedResidual, MobileNetV2
from signticket.models.registry import get, names, register
from signticket.models.resnet_cifar import BasicBlock, CifarResNet, cifar_resnet, resnet18, resnet20
from signticket.models.resnet_imagenet import Bottleneck, ResNet, resnet50
from signticket.models.variables import init_variables
from signticket.models.vgg import VGG, vgg11, vgg16

__all__ = [
    "MLP",
    "VGG",
    "BasicBlock",
    "Bottleneck",
    "CifarResNet",
    "ConvNet",
    "InvertedResidual",
    "MobileNetV2",
    "ResNet",
    "cifar_resnet",
    "get",
    "init_variables",
    "names",
    "register",
    "resnet18",
    "resnet20",
    "resnet50",
    "vgg11",
    "vgg16",
]
