"""The scheduler API shared by GLIDE's samplers: timestep bookkeeping and ``step``.

A scheduler wraps a (respaced) :class:`~.gaussian.GaussianDiffusion`. It
speaks ORIGINAL timesteps (those the UNet is called with); ``step`` maps one
to its index in the respaced process and hands both to the sampler's
``_update``, the only method a sampler implements.
"""
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch

from .gaussian import CondFn, DenoisedFn, GaussianDiffusion
from .schedules import RespacingSpec, get_named_beta_schedule, respace_betas, respaced_timesteps


@dataclass
class GlideSchedulerOutput:
    """Result of a scheduler ``step``.

    Attributes:
        prev_sample: the sample at the next (smaller) kept timestep, in the
            input's dtype.
        pred_xstart: the processed x0 prediction (denoised_fn applied,
            clipped unless clipping is off), in the input's dtype.
    """
    prev_sample: torch.Tensor
    pred_xstart: torch.Tensor


class GlideSchedulerBase:
    """Timestep bookkeeping and the ``step`` entry point of the GLIDE samplers.

    Args:
        num_train_timesteps: T of the training process (1000 for GLIDE).
        beta_schedule: ``'squaredcos_cap_v2'`` (GLIDE) or ``'linear'``.
        clip_sample: clamp every x0 prediction to [-1, 1] before the update
            (GLIDE's ``clip_denoised``, default True); ``step``'s
            ``clip_denoised`` overrides it per call. Flat images whose colours
            sit on the range ends (0 or 255) may want it off: the clamp
            removes only the outward errors of a noisy x0 guess there, so the
            chain drifts inward.

    After construction the scheduler covers all ``num_train_timesteps``
    steps; :meth:`set_timesteps` respaces it.  ``timesteps`` always holds the
    ORIGINAL timesteps (descending) that the model must be called with, and
    ``step`` takes one of them.
    """

    init_noise_sigma = 1.0
    #: whether ``step`` accepts a guidance ``cond_fn`` (CLIP guidance)
    supports_cond_fn = False

    def __init__(self,
                 num_train_timesteps: int = 1000,
                 beta_schedule: str = 'squaredcos_cap_v2',
                 clip_sample: bool = True):
        self.num_train_timesteps = num_train_timesteps
        self.beta_schedule = beta_schedule
        self.clip_sample = bool(clip_sample)
        self.betas = get_named_beta_schedule(beta_schedule,
                                             num_train_timesteps)
        self.train_diffusion = GaussianDiffusion.from_schedule(
            beta_schedule, num_train_timesteps)
        self._install(self.train_diffusion, None)

    def __len__(self) -> int:
        return self.num_train_timesteps

    def _install(self, diffusion: GaussianDiffusion, device) -> None:
        self.diffusion = diffusion
        kept = [int(t) for t in diffusion.timestep_map]
        self.num_inference_steps = len(kept)
        self.timesteps = torch.tensor(
            kept[::-1], dtype=torch.long, device=device)
        self._index_of = {t: i for i, t in enumerate(kept)}
        self._reset_state()

    def _reset_state(self) -> None:
        """Clear per-trajectory state (multistep solvers override this)."""

    def set_timesteps(self, num_inference_steps: RespacingSpec,
                      device: Union[str, torch.device, None] = None,
                      start_timestep: Optional[int] = None) -> None:
        """Respace the sampling process.

        Args:
            num_inference_steps: an int N (N evenly strided steps) or an
                openai respacing string (``'100'``, ``'ddim25'``, ``'fast27'``,
                ``'10,10,3,2,2'``, ...); see ``schedules.space_timesteps``.
            device: where to put ``self.timesteps``.
            start_timestep: keep only the kept timesteps <= this original
                timestep in ``self.timesteps`` (the respaced process itself is
                unchanged), so that sampling starts from a partly noised image
                (img2img / SDEdit); None: all of them.
        """
        kept = respaced_timesteps(num_inference_steps,
                                  self.num_train_timesteps)
        diffusion = GaussianDiffusion(
            respace_betas(self.betas, kept), timestep_map=kept)
        self._install(diffusion, device)
        if start_timestep is None:
            return
        if isinstance(start_timestep, bool) or not isinstance(start_timestep, int) \
                or start_timestep < min(kept):
            raise ValueError(f'start_timestep must be an int >= {min(kept)} (the smallest kept '
                             f'timestep), got {start_timestep!r}')
        self.timesteps = self.timesteps[self.timesteps <= start_timestep]

    def index_for_timestep(self, timestep: Union[int, torch.Tensor],
                           batch_size: int) -> torch.Tensor:
        """Map ORIGINAL timestep(s) to indices of the respaced process.

        Returns a CPU LongTensor of shape ``(batch_size,)``.
        """
        ts = torch.as_tensor(timestep).detach().cpu()
        if ts.is_floating_point() and not torch.equal(ts, ts.round()):
            raise ValueError(f'timestep must be an integer, got {timestep}.')
        values = ts.long().reshape(-1).tolist()
        if len(values) == 1:
            values = values * batch_size
        elif len(values) != batch_size:
            raise ValueError(f'got {len(values)} timesteps for a batch of '
                             f'{batch_size}.')
        try:
            return torch.tensor([self._index_of[v] for v in values],
                                dtype=torch.long)
        except KeyError as err:
            raise ValueError(
                f'timestep {err.args[0]} is not one of the '
                f'{self.num_inference_steps} kept timesteps of this '
                'scheduler; call the model with a value from '
                '`scheduler.timesteps`.') from None

    def step(self,
             model_output: torch.Tensor,
             timestep: Union[int, torch.Tensor],
             sample: torch.Tensor,
             generator: Optional[torch.Generator] = None,
             denoised_fn: DenoisedFn = None,
             noise: Optional[torch.Tensor] = None,
             clip_denoised: Optional[bool] = None,
             cond_fn: CondFn = None) -> GlideSchedulerOutput:
        """One sampling step from ``timestep`` to the next smaller kept timestep.

        Args:
            model_output: (B, 2C, H, W) eps then learned-range variance values;
                samplers that use only eps (DDIM, DPM-Solver++) also take
                (B, C, H, W).
            timestep: ORIGINAL timestep (int, 0-d or (B,) tensor), one of
                ``self.timesteps``.
            sample: x_t, (B, C, H, W).
            generator: source of the step's noise (stochastic samplers only),
                drawn as ``torch.randn(shape, generator=generator,
                device=sample.device, dtype=sample.dtype)``.
            denoised_fn: applied to the x0 prediction before clamping
                (inpainting pastes the known region there).
            noise: explicit noise instead of drawing it (stochastic samplers only).
            clip_denoised: clamp x0 to [-1, 1]; None (default) -> the
                scheduler's ``clip_sample`` (GLIDE: True).
            cond_fn: guidance gradient ``cond_fn(x_t, t) -> (B, C, H, W)``
                called with the ORIGINAL timesteps ``t`` (B,) (CLIP guidance:
                ``NoisedCLIP.guidance_grad``); ancestral sampling shifts the
                mean by variance x gradient, DDIM shifts the score. Samplers
                whose ``supports_cond_fn`` is False raise ValueError. None
                (default): unguided. Guidance draws no random numbers.

        Returns:
            GlideSchedulerOutput: ``prev_sample`` and ``pred_xstart`` in
            ``sample``'s dtype.
        """
        if cond_fn is not None and not self.supports_cond_fn:
            raise ValueError(f"{type(self).__name__} does not take a cond_fn: CLIP guidance supports "
                             "the 'ddim' and 'ddpm' samplers")
        index = self.index_for_timestep(timestep, sample.shape[0])
        prev, pred_xstart = self._update(
            model_output, sample, index, self.diffusion.original_timesteps(index),
            generator=generator, noise=noise,
            clip_denoised=self.clip_sample if clip_denoised is None else bool(clip_denoised),
            denoised_fn=denoised_fn, cond_fn=cond_fn)
        return GlideSchedulerOutput(prev_sample=prev.to(sample.dtype),
                                    pred_xstart=pred_xstart.to(sample.dtype))

    def _update(self, model_output: torch.Tensor, sample: torch.Tensor, index: torch.Tensor,
                timestep: torch.Tensor, *, generator: Optional[torch.Generator],
                noise: Optional[torch.Tensor], clip_denoised: bool,
                denoised_fn: DenoisedFn, cond_fn: CondFn = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """The sampler's update: ``(prev_sample, pred_xstart)`` in the compute dtype.

        ``index`` (B,) are the CPU indices of ``timestep`` in the respaced
        process ``self.diffusion`` and ``timestep`` (B,) the original ones
        (what a model or a guidance function is called with); the other
        arguments are ``step``'s, ``clip_denoised`` resolved to a bool
        (``cond_fn`` is only ever given to samplers with ``supports_cond_fn``).
        """
        raise NotImplementedError(f'{type(self).__name__} must implement _update')

    def scale_model_input(self, sample: torch.Tensor,
                          timestep=None) -> torch.Tensor:
        """Identity (GLIDE's models take x_t unscaled); diffusers parity."""
        return sample

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor,
                  timesteps: Union[int, torch.Tensor]) -> torch.Tensor:
        """``q_sample`` on the full training process (original timesteps)."""
        return self.train_diffusion.q_sample(original_samples, timesteps,
                                             noise)

    @staticmethod
    def _noise(sample: torch.Tensor, generator: Optional[torch.Generator],
               noise: Optional[torch.Tensor]) -> torch.Tensor:
        if noise is not None:
            if noise.shape != sample.shape:
                raise ValueError(f'noise shape {tuple(noise.shape)} != sample '
                                 f'shape {tuple(sample.shape)}.')
            return noise
        return torch.randn(
            sample.shape,
            generator=generator,
            device=sample.device,
            dtype=sample.dtype)

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(num_train_timesteps='
                f'{self.num_train_timesteps}, beta_schedule='
                f'{self.beta_schedule!r}, num_inference_steps='
                f'{self.num_inference_steps})')
