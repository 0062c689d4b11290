"""infoplane: information-plane analysis of neural networks.

Stages (each a file with a documented format, see README):
checkpoints (``infoplane.checkpoint``) -> activations (``infoplane.hooks``, ``infoplane.store``)
-> estimates (``infoplane.estimators``, ``infoplane.estimate``) -> figures (``infoplane.plot``).
"""
__version__ = "0.1.0"
from infoplane.estimators import DependenceResult, assess, dependence  # noqa: E402,F401
