"""GLIDE's diffusion process and samplers.

Formulas from openai's guided-diffusion / glide-text2im (MIT licence),
DPM-Solver++ (Lu et al. 2022) and k-diffusion; see each module.
"""
from .ddim import GlideDDIMScheduler
from .ddpm import GlideDDPMScheduler
from .dpm_solver import GlideDPMSolverScheduler, GlideDPMSolverSDEScheduler
from .gaussian import GaussianDiffusion
from .loss_terms import approx_standard_normal_cdf, discretized_gaussian_log_likelihood, mean_flat, normal_kl
from .scheduler_base import GlideSchedulerBase, GlideSchedulerOutput
from .schedules import betas_for_alpha_bar, get_named_beta_schedule, respace_betas, respaced_timesteps, space_timesteps

__all__ = [
    'GaussianDiffusion', 'GlideSchedulerBase', 'GlideSchedulerOutput',
    'GlideDDIMScheduler', 'GlideDDPMScheduler', 'GlideDPMSolverScheduler', 'GlideDPMSolverSDEScheduler',
    'get_named_beta_schedule', 'betas_for_alpha_bar', 'space_timesteps',
    'respaced_timesteps', 'respace_betas', 'normal_kl', 'mean_flat',
    'approx_standard_normal_cdf', 'discretized_gaussian_log_likelihood'
]
