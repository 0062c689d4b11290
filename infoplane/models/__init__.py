"""The architectures of the papers as :class:`LayeredNet` s, registered by name.

``build_model("lenet5", input_shape=(1, 8, 8), num_classes=10)``; ``list_models()`` names them all.
"""
from .base import LayeredNet, build_model, get_model_factory, list_models, register_model
from . import mlp, lenet, vgg, resnet, cifar_resnet, vit  # noqa: F401  (importing fills the registry)
from .split import split_into_modules, module_sizes

__all__ = ["LayeredNet", "build_model", "get_model_factory", "list_models", "register_model",
           "split_into_modules", "module_sizes"]
