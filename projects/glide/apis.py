"""Build a GLIDE model from a config without importing all of mmagic.

``mmagic.apis.init_model`` works with every GLIDE config, but importing
``mmagic.apis`` imports every mmagic model and inferencer (several seconds on
a small CPU), and so does the first build from mmagic's ``MODELS`` registry:
mmengine imports a registry's ``locations`` (all of ``mmagic.models``) before
its first lookup. :func:`init_glide` does the same steps with only what GLIDE
needs: importing this module imports ``projects.glide``, whose modules
register themselves in mmagic's registries (and the local checkpoint
loader), and the build skips that first import unless the config names a
type that is not registered yet.
"""
import contextlib
from typing import Optional, Union

from mmagic.registry import DIFFUSION_SCHEDULERS, MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner.checkpoint import load_checkpoint
from torch import nn


@contextlib.contextmanager
def _registered_types_only():
    """Builds from mmagic's MODELS and DIFFUSION_SCHEDULERS see only the types registered
    so far (mmengine's ``Registry.import_from_location`` is skipped while inside)."""
    registries = (MODELS, DIFFUSION_SCHEDULERS)
    imported = [registry._imported for registry in registries]
    for registry in registries:
        registry._imported = True
    try:
        yield
    finally:
        for registry, flag in zip(registries, imported):
            registry._imported = flag


def init_glide(config: Union[str, Config], checkpoint: Optional[str] = None,
               device: str = 'cpu') -> nn.Module:
    """The model of ``config`` with ``checkpoint``'s weights, in eval mode on ``device``.

    The same steps as ``mmagic.apis.init_model``: the config's default scope
    (``'mmagic'`` unless it names one), ``MODELS.build(config.model)``
    (``test_cfg`` and ``data_preprocessor`` come with it), the weights
    loaded through mmengine's ``load_checkpoint`` (which reads local files
    with the project's ``weights_only`` loader; ``Glide`` refuses a
    checkpoint that does not fit with ``CheckpointMismatchError``),
    ``model.cfg = config``, then ``.to(device)`` and ``.eval()``.

    Args:
        config (str | Config): config file or loaded config.
        checkpoint (str | None): weights file; None keeps the initial weights.
        device (str): ``'cpu'``, ``'cuda'`` or ``'cuda:N'``.
    """
    if isinstance(config, str):
        config = Config.fromfile(config)
    elif not isinstance(config, Config):
        raise TypeError(f'config must be a file name or an mmengine Config, got {type(config).__name__}')
    if 'model' not in config:
        raise ValueError(f'config {config.filename} has no model section')
    init_default_scope(config.get('default_scope', 'mmagic'))
    try:
        with _registered_types_only():
            model = MODELS.build(config.model)
    except KeyError:  # a type of mmagic's own (or a plugin's): import them and build again
        model = MODELS.build(config.model)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    model.cfg = config
    return model.to(device).eval()
