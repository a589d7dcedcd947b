"""DDIM sampling for GLIDE (Song et al. 2021, "Denoising Diffusion Implicit
Models"), with the update rule of openai's guided-diffusion / glide-text2im
``ddim_sample`` (MIT licence); the math lives in ``gaussian.py``."""
from typing import Optional, Union

import torch
from mmagic.registry import DIFFUSION_SCHEDULERS

from .gaussian import DenoisedFn, GlideSchedulerBase, GlideSchedulerOutput


@DIFFUSION_SCHEDULERS.register_module()
class GlideDDIMScheduler(GlideSchedulerBase):
    """DDIM over GLIDE's (respaced) learned-range process.

    Args:
        num_train_timesteps: T of the training process (1000).
        beta_schedule: ``'squaredcos_cap_v2'`` (GLIDE) or ``'linear'``.
        eta: DDIM stochasticity; 0 (default) is the deterministic sampler
            GLIDE's reference notebooks use.
        clip_sample: clamp x0 predictions to [-1, 1] (GLIDE: True; see
            ``GlideSchedulerBase``).

    Each step takes the x0 prediction (``denoised_fn`` applied, clamped to
    [-1, 1] unless ``clip_sample`` is off), re-derives eps from it and moves
    to the previous kept timestep; the last step (original timestep of index 0) returns x0.
    """

    def __init__(self,
                 num_train_timesteps: int = 1000,
                 beta_schedule: str = 'squaredcos_cap_v2',
                 eta: float = 0.0,
                 clip_sample: bool = True):
        self.eta = float(eta)
        super().__init__(num_train_timesteps, beta_schedule, clip_sample)

    def step(self,
             model_output: torch.Tensor,
             timestep: Union[int, torch.Tensor],
             sample: torch.Tensor,
             generator: Optional[torch.Generator] = None,
             denoised_fn: DenoisedFn = None,
             noise: Optional[torch.Tensor] = None,
             clip_denoised: Optional[bool] = None) -> GlideSchedulerOutput:
        """One DDIM step.

        Args:
            model_output: (B, 2C, H, W) (eps + variance values; the variance
                channels are ignored) or (B, C, H, W) eps.
            timestep: ORIGINAL timestep (int, 0-d or (B,) tensor), one of
                ``self.timesteps``.
            sample: x_t, (B, C, H, W).
            generator: for the noise when ``eta != 0``.
            denoised_fn: applied to the x0 prediction before clamping.
            noise: explicit noise instead of drawing it (eta != 0 only).
            clip_denoised: clamp x0 to [-1, 1]; None (default) -> the
                scheduler's ``clip_sample`` (GLIDE: True).
        """
        idx = self.index_for_timestep(timestep, sample.shape[0])
        if self.eta != 0:
            noise = self._noise(sample, generator, noise)
        out = self.diffusion.ddim_sample(
            model_output,
            sample,
            idx,
            eta=self.eta,
            noise=noise,
            clip_denoised=self._clip(clip_denoised),
            denoised_fn=denoised_fn)
        return GlideSchedulerOutput(
            prev_sample=out['sample'].to(sample.dtype),
            pred_xstart=out['pred_xstart'].to(sample.dtype))
