"""Ancestral (DDPM) sampling for GLIDE with the learned-range variance
(Ho et al. 2020; Nichol & Dhariwal 2021), following openai's guided-diffusion
/ glide-text2im ``p_sample`` (MIT licence); the math lives in
``gaussian.py``."""
from typing import Optional, Union

import torch
from mmagic.registry import DIFFUSION_SCHEDULERS

from .gaussian import DenoisedFn, GlideSchedulerBase, GlideSchedulerOutput


@DIFFUSION_SCHEDULERS.register_module()
class GlideDDPMScheduler(GlideSchedulerBase):
    """Ancestral sampler: ``x_{t-1} = mean + (t != 0) * exp(logvar / 2) * z``.

    Args:
        num_train_timesteps: T of the training process (1000).
        beta_schedule: ``'squaredcos_cap_v2'`` (GLIDE) or ``'linear'``.
        clip_sample: clamp x0 predictions to [-1, 1] (GLIDE: True; see
            ``GlideSchedulerBase``).

    The model must output 2C channels (eps, then learned-range variance
    values in [-1, 1]).  Noise is drawn at every step, the last one included
    (where it is multiplied by 0), so a seeded global RNG follows the same
    stream as the reference's ``p_sample_loop``.
    """

    def step(self,
             model_output: torch.Tensor,
             timestep: Union[int, torch.Tensor],
             sample: torch.Tensor,
             generator: Optional[torch.Generator] = None,
             denoised_fn: DenoisedFn = None,
             noise: Optional[torch.Tensor] = None,
             clip_denoised: Optional[bool] = None) -> GlideSchedulerOutput:
        """One ancestral step.

        Args:
            model_output: (B, 2C, H, W) eps + variance values.
            timestep: ORIGINAL timestep (int, 0-d or (B,) tensor), one of
                ``self.timesteps``.
            sample: x_t, (B, C, H, W).
            generator: for the noise, drawn with
                ``torch.randn(shape, generator=generator, device=sample.device,
                dtype=sample.dtype)``.
            denoised_fn: applied to the x0 prediction before clamping.
            noise: explicit noise instead of drawing it.
            clip_denoised: clamp x0 to [-1, 1]; None (default) -> the
                scheduler's ``clip_sample`` (GLIDE: True).
        """
        idx = self.index_for_timestep(timestep, sample.shape[0])
        noise = self._noise(sample, generator, noise)
        out = self.diffusion.p_sample(
            model_output,
            sample,
            idx,
            noise=noise,
            clip_denoised=self._clip(clip_denoised),
            denoised_fn=denoised_fn)
        return GlideSchedulerOutput(
            prev_sample=out['sample'].to(sample.dtype),
            pred_xstart=out['pred_xstart'].to(sample.dtype))
