"""GLIDE (Nichol et al., 2021) for MMagic/MMEngine.

Importing this package (configs do it through ``custom_imports``) registers
the models, schedulers, datasets and metrics in mmagic's registries and the
safe checkpoint loader.
"""
from . import checkpoint  # noqa: F401  (registers the local checkpoint loader)
from .datasets import *  # noqa: F401,F403
from .engine import *  # noqa: F401,F403
from .evaluation import *  # noqa: F401,F403
from .models import *  # noqa: F401,F403
