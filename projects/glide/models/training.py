"""The parts of ``Glide.loss``, as registered components named in ``train_cfg``.

``Glide.loss`` draws timesteps (a timestep sampler), noise (:class:`TrainingNoise`),
computes GLIDE's hybrid loss with optional per-row (:class:`TruncatedSNRWeight`)
and per-pixel (:class:`PixelWeight` subclasses) weights of the eps MSE, then
adds each :class:`AuxiliaryLoss`. GLIDE itself is the default of each part:
uniform timesteps, white noise, an unweighted MSE, no auxiliary loss. Each
component checks its own arguments; sampling never uses them.
"""
import contextlib
import copy
import numbers
from dataclasses import dataclass
from typing import Any, ContextManager, Dict, Optional

import torch
import torch.nn.functional as F
from mmagic.registry import MODELS
from torch import nn

#: train_cfg keys that became components: key -> what replaces it (packages
#: with their own retired keys add them on import)
RETIRED_TRAIN_CFG_KEYS = dict(
    high_noise_prob="timestep_sampler=dict(type='HighNoiseTimestepSampler', prob=..., start=...)",
    high_noise_from="timestep_sampler=dict(type='HighNoiseTimestepSampler', prob=..., start=...)",
    offset_noise="noise=dict(type='TrainingNoise', offset=...)",
    coarse_noise="noise=dict(type='TrainingNoise', coarse=..., coarse_grid=...)",
    coarse_noise_grid="noise=dict(type='TrainingNoise', coarse=..., coarse_grid=...)",
    max_mse_weight="mse_weight=dict(type='TruncatedSNRWeight', max_weight=...)",
    foreground_weight="pixel_weights=[dict(type='ForegroundPixelWeight', weight=...)]")

#: train_cfg's keys and their defaults (GLIDE's recipe)
TRAIN_CFG_DEFAULTS = dict(stage='base', caption_dropout=0.2,
                          timestep_sampler=dict(type='UniformTimestepSampler'),
                          noise=dict(type='TrainingNoise'), mse_weight=None, pixel_weights=[],
                          aux_losses=[])


def build_module(registry, cfg):
    """``cfg`` built from ``registry`` if it is a config dict, else ``cfg`` itself."""
    return cfg if not isinstance(cfg, dict) else registry.build(copy.deepcopy(cfg))


def _check_number(owner: str, name: str, value, low: float, high: float = float('inf')) -> None:
    """ValueError naming ``owner``'s argument ``name`` unless low <= value <= high."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not low <= value <= high:
        bounds = f'in [{low}, {high}]' if high != float('inf') else f'>= {low}'
        raise ValueError(f'{owner}: {name} must be {bounds}, got {value!r}')


def _check_int(owner: str, name: str, value, low: int) -> None:
    """ValueError naming ``owner``'s argument ``name`` unless it is an int >= low."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f'{owner}: {name} must be an int >= {low}, got {value!r}')


# ----------------------------------------------------------------- timesteps
class TimestepSampler:
    """Draws (B,) long training timesteps in [0, T) on ``device``."""

    def check(self, num_timesteps: int) -> None:
        """Errors for arguments that do not fit a process of ``num_timesteps`` steps."""

    def __call__(self, batch_size: int, num_timesteps: int, device) -> torch.Tensor:
        raise NotImplementedError(f'{type(self).__name__} must implement __call__')


@MODELS.register_module()
class UniformTimestepSampler(TimestepSampler):
    """Timesteps uniform on [0, T): GLIDE's."""

    def __call__(self, batch_size: int, num_timesteps: int, device) -> torch.Tensor:
        return torch.randint(0, num_timesteps, (batch_size, ), device=device)


@MODELS.register_module()
class HighNoiseTimestepSampler(UniformTimestepSampler):
    """Uniform timesteps, except that with probability ``prob`` a row is
    drawn uniformly from [``start``, T) instead.

    Why: on images whose content is mostly low-frequency (flat colours),
    ``x_t`` itself reveals the colours and the layout at all but the
    noisiest timesteps (the mean of many pixels averages the noise away),
    so only the last few percent of the schedule need the text. Drawing
    more of them reweights the objective towards the steps that decide the
    composition (Hoogeboom et al. 2023, "simple diffusion"; Chen 2023, "On
    the importance of noise scheduling for diffusion models").
    """

    def __init__(self, prob: float, start: int):
        _check_number('HighNoiseTimestepSampler', 'prob', prob, 0, 1)
        _check_int('HighNoiseTimestepSampler', 'start', start, 0)
        self.prob, self.start = prob, start

    def check(self, num_timesteps: int) -> None:
        if not self.start < num_timesteps:
            raise ValueError(f'HighNoiseTimestepSampler: start must be in [0, {num_timesteps}), '
                             f'got {self.start}')

    def __call__(self, batch_size: int, num_timesteps: int, device) -> torch.Tensor:
        t = super().__call__(batch_size, num_timesteps, device)
        if self.prob > 0:
            high = torch.randint(self.start, num_timesteps, (batch_size, ), device=device)
            t = torch.where(torch.rand(batch_size, device=device) < self.prob, high, t)
        return t


# --------------------------------------------------------------------- noise
@MODELS.register_module()
class TrainingNoise:
    """The training noise for images x0 (B, C, H, W): white noise, plus
    ``offset`` times one standard normal draw per image and channel,
    constant over the pixels ("offset noise", Guttenberg 2023), plus
    ``coarse`` times a standard normal (B, C, g, g) grid (g =
    ``coarse_grid``) upsampled bilinearly to H x W (one level of the
    "pyramid noise" of Whitaker 2023).

    Why: with white noise the mean of ``x_t`` over the pixels carries the
    mean of ``x0`` with only 1/sqrt(H*W) of noise, so a model can read an
    image's overall colour from ``x_t`` at nearly every timestep and has no
    reason to take it from the text, while sampling starts from a
    colour-neutral ``x_T``. The offset hides that mean at high noise, so
    only the prompt can supply it; the coarse grid does the same for the
    layout (a shape-sized blob in ``x_t`` is no evidence of a shape). Sampling
    is unchanged (white ``x_T``).
    """

    def __init__(self, offset: float = 0., coarse: float = 0., coarse_grid: int = 4):
        _check_number('TrainingNoise', 'offset', offset, 0)
        _check_number('TrainingNoise', 'coarse', coarse, 0)
        _check_int('TrainingNoise', 'coarse_grid', coarse_grid, 1)
        self.offset, self.coarse, self.coarse_grid = offset, coarse, coarse_grid

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        noise = torch.randn_like(x0)
        if self.offset > 0:
            noise = noise + self.offset * torch.randn(*x0.shape[:2], 1, 1, device=x0.device,
                                                      dtype=x0.dtype)
        if self.coarse > 0:
            grid = self.coarse_grid
            low = torch.randn(*x0.shape[:2], grid, grid, device=x0.device, dtype=x0.dtype)
            noise = noise + self.coarse * F.interpolate(low, size=x0.shape[-2:], mode='bilinear',
                                                        align_corners=False)
        return noise


# ------------------------------------------------------------------- weights
@MODELS.register_module()
class TruncatedSNRWeight:
    """(B,) weights ``min(max(1, 1 / SNR), max_weight)`` of the eps MSE for
    rows with ``inverse_snr`` = 1 / SNR(t) (``GaussianDiffusion.inverse_snr``).

    Why: since ``|eps - eps_hat|^2 = SNR * |x0 - x0_hat|^2``, the plain eps
    MSE hardly penalises a wrong x0 where the SNR is small, which is where
    the text must decide colours and layout. ``max(1, 1/SNR)`` is the
    "truncated SNR" weighting of Salimans & Ho 2022 (Progressive
    Distillation): x0 MSE where SNR < 1, eps MSE elsewhere; the cap keeps the
    last timesteps (SNR down to 1e-9 on the cosine schedule) from dominating.
    """

    def __init__(self, max_weight: float):
        _check_number('TruncatedSNRWeight', 'max_weight', max_weight, 1)
        self.max_weight = max_weight

    def __call__(self, inverse_snr: torch.Tensor) -> torch.Tensor:
        return inverse_snr.clamp(min=1, max=float(self.max_weight))


class PixelWeight:
    """A term of the eps MSE's per-pixel weight ``1 + sum(terms)``:
    ``__call__(x0 (B, C, H, W) in [-1, 1], batch) -> (B, 1, H, W)``, ``weight``
    (>= 0) times a map in [0, 1]."""

    def __init__(self, weight: float):
        _check_number(type(self).__name__, 'weight', weight, 0)
        self.weight = weight

    def __call__(self, x0: torch.Tensor, batch: dict) -> torch.Tensor:
        raise NotImplementedError(f'{type(self).__name__} must implement __call__')


@MODELS.register_module()
class ForegroundPixelWeight(PixelWeight):
    """``weight * foreground``: the foreground is where any channel differs
    by more than 0.1 (about 13 levels of 255) from the background, the
    per-channel median of the image's border pixels.

    Why: for flat-background data whose objects cover a few percent of the
    image, an unweighted MSE makes a wrong object colour cost so little
    beside the background that the loss barely asks the text for it.
    """

    def __call__(self, x0: torch.Tensor, batch: dict) -> torch.Tensor:
        border = torch.cat([x0[..., 0, :], x0[..., -1, :], x0[..., 1:-1, 0], x0[..., 1:-1, -1]],
                           dim=-1)
        background = border.median(dim=-1).values[..., None, None]  # (B, C, 1, 1)
        foreground = ((x0 - background).abs() > 0.1).any(dim=1, keepdim=True)
        return self.weight * foreground.to(x0.dtype)


def pixel_weight(terms, x0: torch.Tensor, batch: dict) -> Optional[torch.Tensor]:
    """The eps MSE's (B, 1, H, W) per-pixel weight ``1 + sum(terms)``, added in
    the list's order; None (every pixel alike) without terms."""
    if not terms:
        return None
    weights = torch.ones_like(x0[:, :1])
    for term in terms:
        weights = weights + term(x0, batch)
    return weights


# ----------------------------------------------------------- auxiliary losses
@dataclass
class AuxLossInputs:
    """What an :class:`AuxiliaryLoss` sees of one training step.

    Attributes:
        batch: the collated batch (the dataset's keys, on their own devices).
        t: (B,) long, the training timesteps.
        keep: (B,) bool, the rows whose prompt was not dropped.
        token_mask: (B, T) bool, True on the prompts' tokens.
        observed: what the loss's :meth:`AuxiliaryLoss.watch` yielded.
    """
    batch: dict
    t: torch.Tensor
    keep: torch.Tensor
    token_mask: torch.Tensor
    observed: Any


class AuxiliaryLoss(nn.Module):
    """A loss ``Glide.loss`` adds as ``loss_<name>``, weighted by ``weight`` (>= 0).

    ``watch(unet)`` is a context manager around the UNet's forward pass (a
    loss on the text attention installs recording processors there) whose
    value reaches :meth:`forward` as ``inputs.observed``; ``forward`` returns
    the unweighted scalar loss.
    """

    def __init__(self, weight: float, name: str):
        super().__init__()
        _check_number(type(self).__name__, 'weight', weight, 0)
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f'{type(self).__name__}: name must be an identifier, got {name!r}')
        self.weight, self.name = weight, name

    def watch(self, unet: nn.Module) -> ContextManager:
        return contextlib.nullcontext()

    def forward(self, inputs: AuxLossInputs) -> torch.Tensor:
        raise NotImplementedError(f'{type(self).__name__} must implement forward')


def parse_train_cfg(train_cfg: Optional[dict]) -> Dict[str, Any]:
    """``train_cfg`` over :data:`TRAIN_CFG_DEFAULTS`, its components built and
    type-checked; retired and unknown keys are errors that name the fix."""
    train_cfg = dict(train_cfg or {})
    for key in train_cfg:
        if key in RETIRED_TRAIN_CFG_KEYS:
            raise ValueError(f'train_cfg.{key} is now a component: use {RETIRED_TRAIN_CFG_KEYS[key]}')
        if key not in TRAIN_CFG_DEFAULTS:
            raise ValueError(f'unknown train_cfg key {key!r}; allowed: {sorted(TRAIN_CFG_DEFAULTS)} '
                             '(components of other packages register when the package is in '
                             'custom_imports)')
    cfg = {**TRAIN_CFG_DEFAULTS, **train_cfg}
    _check_number('train_cfg', 'caption_dropout', cfg['caption_dropout'], 0, 1)
    parts = dict(cfg, timestep_sampler=build_module(MODELS, cfg['timestep_sampler']),
                 noise=build_module(MODELS, cfg['noise']),
                 mse_weight=None if cfg['mse_weight'] is None else build_module(MODELS, cfg['mse_weight']),
                 pixel_weights=[build_module(MODELS, c) for c in cfg['pixel_weights']],
                 aux_losses=[build_module(MODELS, c) for c in cfg['aux_losses']])
    for key, base, built in (('timestep_sampler', TimestepSampler, [parts['timestep_sampler']]),
                             ('pixel_weights', PixelWeight, parts['pixel_weights']),
                             ('aux_losses', AuxiliaryLoss, parts['aux_losses'])):
        bad = [type(p).__name__ for p in built if not isinstance(p, base)]
        if bad:
            raise TypeError(f'train_cfg.{key} must build {base.__name__} components, got {bad}')
    for key in ('noise', 'mse_weight'):
        if parts[key] is not None and not callable(parts[key]):
            raise TypeError(f'train_cfg.{key} must build a callable, got {type(parts[key]).__name__}')
    names = [loss.name for loss in parts['aux_losses']]
    if len(set(names)) != len(names):
        raise ValueError(f'train_cfg.aux_losses must have distinct names, got {names}')
    parts['aux_losses'] = nn.ModuleList(parts['aux_losses'])
    return parts
