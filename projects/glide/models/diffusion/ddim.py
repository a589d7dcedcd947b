"""DDIM sampling for GLIDE (Song et al. 2021, "Denoising Diffusion Implicit
Models"), with the update rule of openai's guided-diffusion / glide-text2im
``ddim_sample`` (MIT licence); the math lives in ``gaussian.py``."""
from mmagic.registry import DIFFUSION_SCHEDULERS

from .scheduler_base import GlideSchedulerBase


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
    to the previous kept timestep; the last step (original timestep of index
    0) returns x0. Noise is drawn only when ``eta != 0``; the variance
    channels of the model output are ignored. With a ``cond_fn`` (CLIP
    guidance) the clipped x0 is score-shifted (``condition_score``, not
    clipped again) before eps is re-derived from it.
    """

    supports_cond_fn = True

    def __init__(self,
                 num_train_timesteps: int = 1000,
                 beta_schedule: str = 'squaredcos_cap_v2',
                 eta: float = 0.0,
                 clip_sample: bool = True):
        self.eta = float(eta)
        super().__init__(num_train_timesteps, beta_schedule, clip_sample)

    def _update(self, model_output, sample, index, timestep, *, generator, noise, clip_denoised,
                denoised_fn, cond_fn=None):
        if self.eta != 0:
            noise = self._noise(sample, generator, noise)
        out = self.diffusion.ddim_sample(model_output, sample, index, eta=self.eta, noise=noise,
                                         clip_denoised=clip_denoised, denoised_fn=denoised_fn,
                                         cond_fn=cond_fn)
        return out['sample'], out['pred_xstart']
