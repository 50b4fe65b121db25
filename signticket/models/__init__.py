"""Flax linen models with explicit, stable submodule names, and a registry to build them by name.

Every model is called as ``model.apply(variables, x, train=...)`` on float32 NHWC images and
returns logits from a top-level Dense named ``head``. Norm layers are named ``bn*`` / ``*_bn``
(BatchNorm) or ``*_ln`` (LayerNorm) so :func:`signticket.tree.is_norm` recognizes them.
"""

from signticket.models.convnet import ConvNet
from signticket.models.efficientnet import EfficientNet, efficientnet_b0
from signticket.models.mlp import MLP
from signticket.models.mlp_mixer import MLPMixer, mlp_mixer
from signticket.models.mobilenet_v2 import InvertedResidual, MobileNetV2
from signticket.models.mobilenet_v2_imagenet import MobileNetV2ImageNet, mobilenet_v2_imagenet
from signticket.models.registry import get, names, register
from signticket.models.resnet_cifar import BasicBlock, CifarResNet, cifar_resnet, resnet18, resnet20
from signticket.models.resnet_imagenet import Bottleneck, ResNet, resnet50
from signticket.models.shufflenet import ShuffleNet, shufflenet
from signticket.models.variables import init_variables
from signticket.models.vgg import VGG, vgg11, vgg16

__all__ = [
    "MLP",
    "VGG",
    "BasicBlock",
    "Bottleneck",
    "CifarResNet",
    "ConvNet",
    "EfficientNet",
    "InvertedResidual",
    "MLPMixer",
    "MobileNetV2",
    "MobileNetV2ImageNet",
    "ResNet",
    "ShuffleNet",
    "cifar_resnet",
    "efficientnet_b0",
    "get",
    "init_variables",
    "mlp_mixer",
    "mobilenet_v2_imagenet",
    "names",
    "register",
    "resnet18",
    "resnet20",
    "resnet50",
    "shufflenet",
    "vgg11",
    "vgg16",
]
