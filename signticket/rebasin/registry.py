"""Model registry name -> spec builder, so experiments can get a spec from a config's model."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from signticket.rebasin.chain_specs import conv_chain_spec, mlp_spec
from signticket.rebasin.resnet_specs import resnet_spec
from signticket.rebasin.spec import PermutationSpec
from signticket.tree import PyTree

SpecBuilder = Callable[[Mapping[str, PyTree]], PermutationSpec]

_SPECS: dict[str, SpecBuilder] = {
    "mlp": mlp_spec,
    "convnet": conv_chain_spec,
    "vgg11": conv_chain_spec,
    "vgg11_bn": conv_chain_spec,
    "vgg11_nofc": conv_chain_spec,
    "vgg16": conv_chain_spec,
    "vgg16_bn": conv_chain_spec,
    "resnet20": resnet_spec,
    "resnet20_rebasin": resnet_spec,
    "resnet18": resnet_spec,
    "resnet50": resnet_spec,
    "resnet50_wide": resnet_spec,
}


def register_spec(model_name: str, builder: SpecBuilder, *, overwrite: bool = False) -> None:
    """Make :func:`spec_for` build specs of ``model_name`` with ``builder(variables)``."""
    if model_name in _SPECS and not overwrite:
        raise ValueError(f"a permutation spec for model {model_name!r} is already registered")
    _SPECS[model_name] = builder


def spec_names() -> list[str]:
    """Registry model names that have a permutation spec."""
    return sorted(_SPECS)


def spec_for(model_name: str, variables: Mapping[str, PyTree]) -> PermutationSpec:
    """The permutation spec of registry model ``model_name`` with these ``variables``
    (``{"params", "batch_stats"}`` arrays or ``jax.eval_shape`` structs; the widths are read
    from them)."""
    if model_name not in _SPECS:
        raise ValueError(
            f"no permutation spec for model {model_name!r}; supported: {', '.join(spec_names())}"
        )
    return _SPECS[model_name](variables)
