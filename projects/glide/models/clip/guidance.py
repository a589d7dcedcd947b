"""How a guidance gradient changes one reverse diffusion step (classifier / CLIP guidance).

The two rules of openai/glide-text2im (MIT), ``gaussian_diffusion.py``
(after Dhariwal & Nichol, 2021, and Song et al., 2021), with the same
operation order and float32 coefficient lookups, so results match it:

* :func:`condition_mean` (ancestral sampling): shift the posterior mean by
  variance x gradient;
* :func:`condition_score` (DDIM): shift eps by ``-sqrt(1 - abar) * gradient``
  and re-derive x0 (not clipped again) and the posterior mean from it.

``diffusion`` is the (respaced) :class:`GaussianDiffusion` of the sampler and
``index`` an index into it (its own ``t``); the gradient must have been taken
at the ORIGINAL timestep of that index (``diffusion.timestep_map[index]``).
"""
from typing import Dict, Sequence, Union

import torch

IndexLike = Union[int, torch.Tensor, Sequence[int]]


def condition_mean(mean: torch.Tensor, variance: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Ancestral step mean under guidance: ``mean + variance * grad`` (float32).

    Args:
        mean, variance (Tensor): (B, C, H, W) of ``p_mean_variance`` (variance
            = exp of the learned log-variance).
        grad (Tensor): (B, C, H, W) guidance gradient at x_t.
    """
    return mean.float() + variance * grad.float()


def condition_score(diffusion, x_t: torch.Tensor, index: IndexLike, pred_xstart: torch.Tensor,
                    grad: torch.Tensor) -> Dict[str, torch.Tensor]:
    """DDIM step quantities under guidance (the score-shift rule).

    Args:
        diffusion (GaussianDiffusion): the sampler's (respaced) process.
        x_t (Tensor): (B, C, H, W) current sample.
        index (int | Tensor): index (or (B,) indices) into ``diffusion``.
        pred_xstart (Tensor): (B, C, H, W) processed (clipped) x0 prediction.
        grad (Tensor): (B, C, H, W) guidance gradient at x_t.

    Returns:
        dict: ``pred_xstart`` (the shifted x0, not clipped: at t = 999 it is
        ~1e4 times the gradient) and ``mean`` (the posterior mean of it and
        x_t); DDIM re-derives eps from this ``pred_xstart``.
    """
    idx = torch.as_tensor(index).long().reshape(-1).cpu()
    alpha_bar = torch.from_numpy(diffusion.alphas_cumprod)[idx].float().to(x_t.device)
    alpha_bar = alpha_bar.view(-1, *[1] * (x_t.dim() - 1))
    eps = diffusion.predict_eps_from_xstart(x_t, index, pred_xstart)
    eps = eps - (1 - alpha_bar).sqrt() * grad
    shifted = diffusion.predict_xstart_from_eps(x_t, index, eps)
    mean, _, _ = diffusion.q_posterior_mean_variance(shifted, x_t, index)
    return dict(pred_xstart=shifted, mean=mean)
