"""DPM-Solver++(2M) for GLIDE, along the ODE and along the SDE.

Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models" (multistep second-order, data prediction); the update
is written like k-diffusion's ``sample_dpmpp_2m`` (MIT licence), transcribed
to the variance-preserving parameterisation of GLIDE's discrete process.

With ``alpha_k = sqrt(abar_k)``, ``sigma_k = sqrt(1 - abar_k)`` and
``lambda_k = log(alpha_k / sigma_k)`` of the kept (respaced) timesteps, the
step from index ``i`` to ``j = i - 1`` is::

    h   = lambda_j - lambda_i
    D   = x0_i                                   (first step, and j == 0)
    D   = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i+1}    (otherwise, r = h_prev / h)
    x_j = (sigma_j / sigma_i) x_i - alpha_j * expm1(-h) * D

where ``x0`` is the processed x0 prediction from the eps channels (variance
channels ignored; ``denoised_fn`` applied, then clamped to [-1, 1], like the
other GLIDE samplers).

End of the trajectory (our choice, documented here):

* the step into index 0 (the smallest kept timestep, 0 for every spec) is
  first order (``D = x0_1``, i.e. a DDIM step), like diffusers'
  ``lower_order_final``.  With GLIDE's cosine schedule ``abar_0`` is within
  4e-5 of 1, so that last interval spans about 2 units of log-SNR at 20
  steps (lambda 2.4 -> 4.4); linear extrapolation of x0 over it overshoots
  badly (on a Gaussian toy it was worse than DDIM), while the first-order
  step is accurate because x0 has nearly converged there;
* the call at index 0 goes to ``abar = 1`` (sigma = 0, lambda = +inf), where
  the update reduces to returning the x0 prediction ``x0_0`` (k-diffusion
  does the same on its final step to sigma = 0; DDIM returns the same).

All schedule coefficients are computed in float64 and applied as Python
floats.
"""
from typing import Optional

import numpy as np
import torch
from mmagic.registry import DIFFUSION_SCHEDULERS

from .gaussian import GaussianDiffusion
from .scheduler_base import GlideSchedulerBase


@DIFFUSION_SCHEDULERS.register_module()
class GlideDPMSolverScheduler(GlideSchedulerBase):
    """DPM-Solver++(2M) over GLIDE's (respaced) discrete process.

    Args:
        num_train_timesteps: T of the training process (1000).
        beta_schedule: ``'squaredcos_cap_v2'`` (GLIDE) or ``'linear'``.
        clip_sample: clamp x0 predictions to [-1, 1] (GLIDE: True; see
            ``GlideSchedulerBase``).

    State: the previous step's x0 prediction and its step index, cleared by
    :meth:`set_timesteps`.  The second-order correction is used only when
    the previous call was the immediately preceding kept timestep with the
    same sample shape, so a new trajectory (starting at
    ``self.timesteps[0]``) always begins first order; the step into the
    smallest kept timestep is first order too (see the module docstring).
    The sampler is deterministic; ``generator`` and ``noise`` are accepted
    for API parity with the other GLIDE schedulers and unused. Guidance
    (``cond_fn``, CLIP guidance) is not supported: ``step`` raises ValueError.
    """

    def _install(self, diffusion: GaussianDiffusion, device) -> None:
        abar = diffusion.alphas_cumprod
        self._alpha = np.sqrt(abar)
        self._sigma = np.sqrt(1.0 - abar)
        self._lambda = np.log(self._alpha) - np.log(self._sigma)
        super()._install(diffusion, device)

    def _reset_state(self) -> None:
        self._prev_x0: Optional[torch.Tensor] = None
        self._prev_index: Optional[int] = None

    def _update(self, model_output, sample, index, timestep, *, generator, noise, clip_denoised,
                denoised_fn, cond_fn=None):
        i = int(index[0])
        if not bool((index == i).all()):
            raise ValueError('GlideDPMSolverScheduler needs the same '
                             'timestep for the whole batch.')
        x0 = self.diffusion.pred_xstart(model_output, sample, index,
                                        clip_denoised, denoised_fn)
        x = sample.to(x0.dtype)
        if i == 0:
            prev = x0
        else:
            j = i - 1
            lam = self._lambda
            h = lam[j] - lam[i]
            if (j > 0 and self._prev_x0 is not None
                    and self._prev_index == i + 1
                    and self._prev_x0.shape == x0.shape):
                r = (lam[i] - lam[i + 1]) / h
                d = (float(1 + 1 / (2 * r)) * x0 -
                     float(1 / (2 * r)) * self._prev_x0.to(x0))
            else:
                d = x0
            prev = self._transfer(x, d, i, j, h, generator, noise)
        self._prev_x0 = x0
        self._prev_index = i
        return prev, x0

    def _transfer(self, x, d, i, j, h, generator, noise):
        """x_j from x_i and the data estimate d (the deterministic update)."""
        return float(self._sigma[j] / self._sigma[i]) * x - float(self._alpha[j] * np.expm1(-h)) * d


@DIFFUSION_SCHEDULERS.register_module()
class GlideDPMSolverSDEScheduler(GlideDPMSolverScheduler):
    """DPM-Solver++(2M) SDE: the same data estimates as
    :class:`GlideDPMSolverScheduler`, moved along the reverse SDE instead of
    the ODE (Lu et al. 2022, section 5; k-diffusion's ``sample_dpmpp_2m_sde``
    with eta 1 and the midpoint correction, in GLIDE's variance-preserving
    terms). It adds fresh noise every step, as GLIDE's ancestral sampler
    does, which the ODE solvers lack::

        x_j = (sigma_j / sigma_i) e^(-h) x_i + alpha_j (1 - e^(-2h)) D
              + sigma_j sqrt(1 - e^(-2h)) z,    z ~ N(0, I)

    ``generator`` / ``noise`` give z (as for ``GlideDDPMScheduler``).
    """

    def _transfer(self, x, d, i, j, h, generator, noise):
        z = self._noise(x, generator, noise)
        decay = -np.expm1(-2 * h)
        return (float(self._sigma[j] / self._sigma[i] * np.exp(-h)) * x + float(self._alpha[j] * decay) * d +
                float(self._sigma[j] * np.sqrt(decay)) * z.to(x.dtype))
