"""Ancestral (DDPM) sampling for GLIDE with the learned-range variance
(Ho et al. 2020; Nichol & Dhariwal 2021), following openai's guided-diffusion
/ glide-text2im ``p_sample`` (MIT licence); the math lives in
``gaussian.py``."""
from mmagic.registry import DIFFUSION_SCHEDULERS

from .scheduler_base import GlideSchedulerBase


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
    stream as the reference's ``p_sample_loop``. With a ``cond_fn`` (CLIP
    guidance) the mean is shifted by variance x gradient (``condition_mean``).
    """

    supports_cond_fn = True

    def _update(self, model_output, sample, index, timestep, *, generator, noise, clip_denoised,
                denoised_fn, cond_fn=None):
        noise = self._noise(sample, generator, noise)
        out = self.diffusion.p_sample(model_output, sample, index, noise=noise,
                                      clip_denoised=clip_denoised, denoised_fn=denoised_fn,
                                      cond_fn=cond_fn)
        return out['sample'], out['pred_xstart']
