"""``torch.compile`` for the GLIDE UNets: one compiled graph per stage.

Each UNet's ``forward`` is replaced by ``torch.compile(forward, dynamic=False,
**options)``. A sampling loop calls a stage's UNet with the same shapes at
every step (only the values of ``x_t`` and the timesteps change), so with
static shapes the loop compiles once per stage and batch size and then runs
the compiled graph; a new batch size or resolution compiles another one (up
to torch's recompile limit). ``mode='reduce-overhead'`` on a CUDA device
adds CUDA graphs. The text transformer runs once per prompt batch and stays
eager. ``encode_text`` and ``state_dict`` are unaffected, so weights load and
save as before.
"""
import torch
from torch import nn

#: ``torch.compile`` arguments this module sets unless the caller does
DEFAULTS = dict(dynamic=False)


def compile_unet(unet: nn.Module, **options) -> nn.Module:
    """Compile ``unet.forward`` in place (a second call recompiles from the eager forward)."""
    unet.__dict__.pop('forward', None)
    unet.forward = torch.compile(unet.forward, **{**DEFAULTS, **options})
    return unet


def uncompile_unet(unet: nn.Module) -> nn.Module:
    """Restore the eager ``forward`` of a UNet compiled by :func:`compile_unet`."""
    unet.__dict__.pop('forward', None)
    return unet


def compile_unets(model: nn.Module, **options) -> nn.Module:
    """Compile the base UNet and, if there is one, the upsampler's (see module docstring)."""
    for unet in (model.unet, model.unet_up):
        if unet is not None:
            compile_unet(unet, **options)
    return model
