"""Learned-range Gaussian diffusion math of GLIDE (the single place for it).

GLIDE's UNets predict ``eps`` (first ``C`` output channels) and a per-pixel
interpolation value ``v`` in ``[-1, 1]`` (last ``C`` channels) between the
lower (posterior, clipped) and upper (``beta_t``) bound of the log-variance
(Nichol & Dhariwal 2021, "learned range").  The formulas here are those of
openai's guided-diffusion / glide-text2im ``GaussianDiffusion`` and
``SpacedDiffusion`` (MIT licence), implemented independently:

* every coefficient array is float64 numpy on the (possibly respaced)
  process; it is indexed and cast to float32 exactly like the reference's
  ``_extract_into_tensor`` (``torch.from_numpy(arr)[t].float()``) and the
  tensor arithmetic follows the reference's operation order, so float32
  results match it bit for bit;
* ``t`` arguments of :class:`GaussianDiffusion` are **indices into this
  process** (the reference's ``t`` inside ``SpacedDiffusion``); the UNet is
  always called with the original timestep ``timestep_map[t]``.  For the full
  1000-step training process both coincide.

Half-precision inputs are computed in float32 (the reference promotes them
the same way); float32 and float64 inputs keep their dtype.

The schedulers (``scheduler_base.py`` and the samplers beside it) step
through these processes.
"""
from typing import Callable, Dict, Optional, Sequence, Union

import numpy as np
import torch

from .loss_terms import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from .schedules import RespacingSpec, get_named_beta_schedule, respace_betas, respaced_timesteps

# the loss terms are part of this module's API (the package exports them from here)
__all__ = ['GaussianDiffusion', 'CondFn', 'DenoisedFn', 'IndexLike']

DenoisedFn = Optional[Callable[[torch.Tensor], torch.Tensor]]
IndexLike = Union[int, torch.Tensor, Sequence[int]]
#: a guidance gradient ``cond_fn(x_t, t) -> (B, C, H, W)``, ``t`` (B,) ORIGINAL timesteps
CondFn = Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------
def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _extract(arr: np.ndarray, idx: torch.Tensor, x: torch.Tensor
             ) -> torch.Tensor:
    """``arr[idx]`` as float32, shaped ``(B, 1, ..., 1)`` to broadcast on x.

    Mirrors the reference's ``_extract_into_tensor`` (float64 lookup, then
    ``.float()``); the reference's trailing ``+ zeros(shape)`` only
    materialises the broadcast and does not change any value.
    """
    res = torch.from_numpy(arr)[idx.cpu()].float().to(x.device)
    return res.reshape(res.shape + (1, ) * (x.dim() - res.dim()))


# --------------------------------------------------------------------------
# the diffusion process
# --------------------------------------------------------------------------
class GaussianDiffusion:
    """A (possibly respaced) discrete Gaussian diffusion process with the
    learned-range variance and eps prediction used by GLIDE.

    Args:
        betas: float64 betas of this process (already respaced).
        timestep_map: the original timestep of every index of this process
            (defaults to ``range(len(betas))``).

    Use :meth:`from_schedule` to build GLIDE's processes.
    """

    def __init__(self, betas, timestep_map: Optional[Sequence[int]] = None):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size == 0:
            raise ValueError('betas must be a non-empty 1-D array.')
        if not ((betas > 0).all() and (betas <= 1).all()):
            raise ValueError('betas must lie in (0, 1].')
        self.betas = betas
        self.num_timesteps = int(betas.shape[0])
        if timestep_map is None:
            timestep_map = range(self.num_timesteps)
        self.timestep_map = np.asarray(list(timestep_map), dtype=np.int64)
        if self.timestep_map.shape != betas.shape:
            raise ValueError('timestep_map must have one entry per beta.')

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas, axis=0)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)

        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)

        # q(x_{t-1} | x_t, x_0)
        self.posterior_variance = (
            betas * (1.0 - self.alphas_cumprod_prev) /
            (1.0 - self.alphas_cumprod))
        # The variance is 0 at t = 0; reuse the t = 1 value there so the log
        # stays finite (same clipping as the reference).
        if self.num_timesteps > 1:
            self.posterior_log_variance_clipped = np.log(
                np.append(self.posterior_variance[1],
                          self.posterior_variance[1:]))
        else:  # degenerate one-step process: fall back to log(beta)
            self.posterior_log_variance_clipped = np.log(betas)
        self.posterior_mean_coef1 = (
            betas * np.sqrt(self.alphas_cumprod_prev) /
            (1.0 - self.alphas_cumprod))
        self.posterior_mean_coef2 = ((1.0 - self.alphas_cumprod_prev) *
                                     np.sqrt(alphas) /
                                     (1.0 - self.alphas_cumprod))
        self.log_betas = np.log(betas)

    @classmethod
    def from_schedule(cls,
                      beta_schedule: str = 'squaredcos_cap_v2',
                      num_train_timesteps: int = 1000,
                      respacing: Optional[RespacingSpec] = None
                      ) -> 'GaussianDiffusion':
        """Build the process of a named schedule, respaced by ``respacing``.

        ``respacing=None`` keeps all ``num_train_timesteps`` steps (the
        training process).  As in the reference (which always wraps the
        process in ``SpacedDiffusion``), the betas are recomputed from the
        kept ``alphas_cumprod`` even when every step is kept.
        """
        base = get_named_beta_schedule(beta_schedule, num_train_timesteps)
        kept = (list(range(num_train_timesteps)) if respacing is None else
                respaced_timesteps(respacing, num_train_timesteps))
        return cls(respace_betas(base, kept), timestep_map=kept)

    # ------------------------------------------------------------------
    # index handling
    # ------------------------------------------------------------------
    def _index(self, t: IndexLike, batch_size: int) -> torch.Tensor:
        """Turn ``t`` (int, 0-d/1-d tensor or sequence of indices into this
        process) into a CPU LongTensor of shape ``(batch_size,)``."""
        idx = torch.as_tensor(t).detach().cpu()
        if idx.is_floating_point():
            if not torch.equal(idx, idx.round()):
                raise ValueError(f'step indices must be integers, got {t}.')
        idx = idx.long().reshape(-1)
        if idx.numel() == 1:
            idx = idx.expand(batch_size)
        elif idx.numel() != batch_size:
            raise ValueError(f'got {idx.numel()} step indices for a batch of '
                             f'{batch_size}.')
        if idx.numel() and (int(idx.min()) < 0
                            or int(idx.max()) >= self.num_timesteps):
            raise ValueError(f'step index out of range [0, '
                             f'{self.num_timesteps}): {t}.')
        return idx

    def original_timesteps(self, t: IndexLike) -> torch.Tensor:
        """Original (training) timesteps of indices ``t`` of this process."""
        idx = torch.as_tensor(t).long().cpu()
        return torch.from_numpy(self.timestep_map)[idx]

    def _cond_fn_timesteps(self, t: IndexLike, x: torch.Tensor) -> torch.Tensor:
        """(B,) int64 ORIGINAL timesteps of indices ``t`` on ``x``'s device: what a
        guidance ``cond_fn`` is called with (never the respaced index)."""
        return self.original_timesteps(self._index(t, x.shape[0])).to(x.device)

    @staticmethod
    def _nonzero_mask(idx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (idx != 0).float().to(x.device).view(-1, *([1] * (x.dim() - 1)))

    # ------------------------------------------------------------------
    # forward process
    # ------------------------------------------------------------------
    def q_sample(self,
                 x_start: torch.Tensor,
                 t: IndexLike,
                 noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Sample ``x_t ~ q(x_t | x_0)``:
        ``sqrt(abar) * x_0 + sqrt(1 - abar) * noise``."""
        if noise is None:
            noise = torch.randn_like(x_start)
        assert noise.shape == x_start.shape
        idx = self._index(t, x_start.shape[0])
        return (_extract(self.sqrt_alphas_cumprod, idx, x_start) * x_start +
                _extract(self.sqrt_one_minus_alphas_cumprod, idx, x_start) *
                noise)

    def q_posterior_mean_variance(self, x_start: torch.Tensor,
                                  x_t: torch.Tensor, t: IndexLike):
        """Mean, variance and clipped log-variance of q(x_{t-1}|x_t, x_0)."""
        assert x_start.shape == x_t.shape
        idx = self._index(t, x_t.shape[0])
        mean = (_extract(self.posterior_mean_coef1, idx, x_t) * x_start +
                _extract(self.posterior_mean_coef2, idx, x_t) * x_t)
        variance = _extract(self.posterior_variance, idx, x_t)
        log_variance = _extract(self.posterior_log_variance_clipped, idx, x_t)
        return mean, variance, log_variance

    def inverse_snr(self, t: IndexLike, batch_size: int) -> torch.Tensor:
        """(B,) float32 ``1 / SNR(t) = (1 - abar_t) / abar_t`` on the CPU: the
        factor between the x0 and the eps squared error,
        ``|x0 - x0_hat|^2 = |eps - eps_hat|^2 / SNR``."""
        idx = self._index(t, batch_size)
        return _extract(self.sqrt_recipm1_alphas_cumprod**2, idx, idx)

    # ------------------------------------------------------------------
    # x0 / eps conversions
    # ------------------------------------------------------------------
    def predict_xstart_from_eps(self, x_t: torch.Tensor, t: IndexLike,
                                eps: torch.Tensor) -> torch.Tensor:
        """``x_0 = sqrt(1/abar) * x_t - sqrt(1/abar - 1) * eps``."""
        assert x_t.shape == eps.shape
        idx = self._index(t, x_t.shape[0])
        return (_extract(self.sqrt_recip_alphas_cumprod, idx, x_t) * x_t -
                _extract(self.sqrt_recipm1_alphas_cumprod, idx, x_t) * eps)

    def predict_eps_from_xstart(self, x_t: torch.Tensor, t: IndexLike,
                                pred_xstart: torch.Tensor) -> torch.Tensor:
        """``eps = (sqrt(1/abar) * x_t - x_0) / sqrt(1/abar - 1)``."""
        idx = self._index(t, x_t.shape[0])
        return ((_extract(self.sqrt_recip_alphas_cumprod, idx, x_t) * x_t -
                 pred_xstart) /
                _extract(self.sqrt_recipm1_alphas_cumprod, idx, x_t))

    def _split(self, model_output: torch.Tensor, x_t: torch.Tensor, need_variance: bool):
        B, C = x_t.shape[:2]
        if model_output.shape[0] != B or model_output.shape[2:] != x_t.shape[2:]:
            raise ValueError(f'model_output shape {tuple(model_output.shape)}'
                             f' does not match x_t {tuple(x_t.shape)}.')
        if model_output.shape[1] == 2 * C:
            eps, var_values = torch.split(model_output, C, dim=1)
        elif model_output.shape[1] == C and not need_variance:
            eps, var_values = model_output, None
        else:
            want = f'{2 * C}' if need_variance else f'{C} or {2 * C}'
            raise ValueError(
                f'model_output has {model_output.shape[1]} channels, expected '
                f'{want} (eps, then learned-range variance values) for '
                f'x_t with {C}.')
        return eps, var_values

    def pred_xstart(self,
                    model_output: torch.Tensor,
                    x_t: torch.Tensor,
                    t: IndexLike,
                    clip_denoised: bool = True,
                    denoised_fn: DenoisedFn = None) -> torch.Tensor:
        """The processed x0 prediction only (eps channels of model_output;
        ``denoised_fn`` then clamp to [-1, 1])."""
        dtype = _compute_dtype(x_t.dtype)
        x_t = x_t.to(dtype)
        eps, _ = self._split(model_output.to(dtype), x_t, need_variance=False)
        x0 = self.predict_xstart_from_eps(x_t, t, eps)
        return self._process_xstart(x0, clip_denoised, denoised_fn)

    @staticmethod
    def _process_xstart(x0, clip_denoised, denoised_fn):
        if denoised_fn is not None:
            x0 = denoised_fn(x0)
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        return x0

    # ------------------------------------------------------------------
    # reverse process
    # ------------------------------------------------------------------
    def p_mean_variance(self,
                        model_output: torch.Tensor,
                        x_t: torch.Tensor,
                        t: IndexLike,
                        clip_denoised: bool = True,
                        denoised_fn: DenoisedFn = None
                        ) -> Dict[str, torch.Tensor]:
        """p(x_{t-1} | x_t) from a learned-range eps model output.

        Args:
            model_output: (B, 2C, ...) eps then variance values in [-1, 1].
            x_t: (B, C, ...).
            t: index (or (B,) indices) into this process.
            clip_denoised: clamp the x0 prediction to [-1, 1].
            denoised_fn: applied to the x0 prediction before clamping
                (inpainting pastes the known region there).

        Returns:
            dict(mean, variance, log_variance, pred_xstart).
        """
        dtype = _compute_dtype(x_t.dtype)
        x_t = x_t.to(dtype)
        eps, var_values = self._split(model_output.to(dtype), x_t, need_variance=True)
        idx = self._index(t, x_t.shape[0])

        min_log = _extract(self.posterior_log_variance_clipped, idx, x_t)
        max_log = _extract(self.log_betas, idx, x_t)
        frac = (var_values + 1) / 2
        model_log_variance = frac * max_log + (1 - frac) * min_log
        model_variance = torch.exp(model_log_variance)

        pred_xstart = self._process_xstart(self.predict_xstart_from_eps(x_t, idx, eps), clip_denoised,
                                           denoised_fn)
        model_mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, idx)
        return dict(mean=model_mean, variance=model_variance, log_variance=model_log_variance,
                    pred_xstart=pred_xstart)

    def p_sample(self,
                 model_output: torch.Tensor,
                 x_t: torch.Tensor,
                 t: IndexLike,
                 noise: Optional[torch.Tensor] = None,
                 clip_denoised: bool = True,
                 denoised_fn: DenoisedFn = None,
                 cond_fn: CondFn = None) -> Dict[str, torch.Tensor]:
        """One ancestral step: ``mean + (t != 0) * exp(0.5 * logvar) * noise``.

        With ``cond_fn`` (guidance, e.g. CLIP's), the mean is first shifted by
        ``variance * cond_fn(x_t, original t)`` (``condition_mean``, the
        reference's ``p_sample``); ``cond_fn`` gets the ORIGINAL timesteps
        (``timestep_map[t]``, (B,) on x_t's device), as the respaced
        reference wraps it. No extra noise is drawn.

        Returns dict(sample, pred_xstart) in the compute dtype.
        """
        out = self.p_mean_variance(model_output, x_t, t, clip_denoised,
                                   denoised_fn)
        if cond_fn is not None:
            from ..clip.guidance import condition_mean
            grad = cond_fn(x_t, self._cond_fn_timesteps(t, x_t))
            out['mean'] = condition_mean(out['mean'], out['variance'], grad).to(out['mean'].dtype)
        if noise is None:
            noise = torch.randn_like(x_t)
        noise = noise.to(out['mean'].dtype)
        idx = self._index(t, x_t.shape[0])
        nonzero_mask = self._nonzero_mask(idx, x_t)
        sample = out['mean'] + nonzero_mask * torch.exp(
            0.5 * out['log_variance']) * noise
        return dict(sample=sample, pred_xstart=out['pred_xstart'])

    def ddim_sample(self,
                    model_output: torch.Tensor,
                    x_t: torch.Tensor,
                    t: IndexLike,
                    eta: float = 0.0,
                    noise: Optional[torch.Tensor] = None,
                    clip_denoised: bool = True,
                    denoised_fn: DenoisedFn = None,
                    cond_fn: CondFn = None
                    ) -> Dict[str, torch.Tensor]:
        """One DDIM step (Song et al. 2021) from index ``t`` to ``t - 1``.

        eps is re-derived from the processed (clipped) x0 prediction, as in
        the reference.  ``noise`` is only needed when ``eta != 0`` (with
        ``eta == 0`` the noise term is exactly zero, so it is not drawn).
        With ``cond_fn`` (guidance), the clipped x0 is first replaced by the
        score-shifted one (``condition_score`` with ``cond_fn(x_t, original
        t)``; not clipped again), from which eps is re-derived, as the
        reference's ``ddim_sample`` does.
        Returns dict(sample, pred_xstart) in the compute dtype.
        """
        dtype = _compute_dtype(x_t.dtype)
        x_t = x_t.to(dtype)
        idx = self._index(t, x_t.shape[0])
        pred_xstart = self.pred_xstart(model_output, x_t, idx, clip_denoised,
                                       denoised_fn)
        if cond_fn is not None:
            from ..clip.guidance import condition_score
            grad = cond_fn(x_t, self._cond_fn_timesteps(idx, x_t))
            pred_xstart = condition_score(self, x_t, idx, pred_xstart, grad)['pred_xstart'].to(dtype)
        eps = self.predict_eps_from_xstart(x_t, idx, pred_xstart)
        alpha_bar = _extract(self.alphas_cumprod, idx, x_t)
        alpha_bar_prev = _extract(self.alphas_cumprod_prev, idx, x_t)
        sigma = (eta * torch.sqrt(
            (1 - alpha_bar_prev) / (1 - alpha_bar)) *
                 torch.sqrt(1 - alpha_bar / alpha_bar_prev))
        mean_pred = (pred_xstart * torch.sqrt(alpha_bar_prev) +
                     torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps)
        if eta == 0:
            sample = mean_pred
        else:
            if noise is None:
                noise = torch.randn_like(x_t)
            nonzero_mask = self._nonzero_mask(idx, x_t)
            sample = mean_pred + nonzero_mask * sigma * noise.to(dtype)
        return dict(sample=sample, pred_xstart=pred_xstart)

    # ------------------------------------------------------------------
    # training
    # ------------------------------------------------------------------
    def training_losses(self, model_output: torch.Tensor,
                        x_start: torch.Tensor, x_t: torch.Tensor,
                        t: IndexLike,
                        noise: torch.Tensor,
                        pixel_weights: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """GLIDE's hybrid loss (plain MSE on eps + variational bound).

        Args:
            model_output: (B, 2C, ...) the model's output at ``x_t``.
            x_start: (B, C, ...) clean data in [-1, 1].
            x_t: ``q_sample(x_start, t, noise)``.
            t: (B,) indices into this process (== timesteps for the full
                training process).
            noise: the eps used to make ``x_t``.
            pixel_weights: optional weights broadcastable to ``x_start``
                (e.g. (B, 1, H, W)) of the squared eps error; the vb term
                stays unweighted.

        Returns:
            dict of (B,) tensors: ``mse`` = mean_flat(w * (noise - eps)^2)
            (w = 1 without ``pixel_weights``);
            ``vb`` = KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) in bits per dim
            for t > 0, discretised-Gaussian decoder NLL in bits per dim at
            t == 0, with the predicted mean detached (only the variance
            channels get the vb gradient); ``loss = mse + vb``.  (The
            reference scales vb by T/1000 only for RESCALED_MSE, which GLIDE
            does not use.)
        """
        dtype = _compute_dtype(x_t.dtype)
        x_t = x_t.to(dtype)
        x_start = x_start.to(dtype)
        noise = noise.to(dtype)
        eps, var_values = self._split(
            model_output.to(dtype), x_t, need_variance=True)
        idx = self._index(t, x_t.shape[0])

        frozen_out = torch.cat([eps.detach(), var_values], dim=1)
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(
            x_start, x_t, idx)
        out = self.p_mean_variance(frozen_out, x_t, idx, clip_denoised=False)
        kl = normal_kl(true_mean, true_log_variance, out['mean'],
                       out['log_variance'])
        kl = mean_flat(kl) / np.log(2.0)
        decoder_nll = -discretized_gaussian_log_likelihood(
            x_start, means=out['mean'], log_scales=0.5 * out['log_variance'])
        decoder_nll = mean_flat(decoder_nll) / np.log(2.0)
        vb = torch.where(idx.to(x_t.device) == 0, decoder_nll, kl)

        squared_error = (noise - eps)**2
        if pixel_weights is not None:
            squared_error = squared_error * pixel_weights.to(dtype)
        mse = mean_flat(squared_error)
        return dict(mse=mse, vb=vb, loss=mse + vb)
