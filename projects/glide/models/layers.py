"""Small building blocks shared by GLIDE's text transformer and UNet.

Normalisation layers always compute their statistics in float32 and return the
input's dtype, so half-precision models (fp16/bf16 weights) keep GLIDE's fp32
normalisation (openai/glide-text2im does the same with ``GroupNorm32`` and its
float32 ``LayerNorm``).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class FP32GroupNorm(nn.GroupNorm):
    """GroupNorm whose statistics and affine transform run in float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(),
                            self.eps).to(x.dtype)


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm that runs in float32 and returns the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(),
                            self.eps).to(x.dtype)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.) -> torch.Tensor:
    """Sinusoidal timestep embedding, cosines first (ADM/GLIDE convention).

    Args:
        timesteps (Tensor): (B,) original diffusion timesteps (0..T-1), any dtype.
        dim (int): embedding width.

    Returns:
        Tensor: (B, dim) float32.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) *
                      torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def cast_except_norms(module: nn.Module, dtype: torch.dtype) -> None:
    """Cast every parameter of ``module`` to ``dtype`` except normalisation layers'.

    GroupNorm/LayerNorm parameters stay float32 (they compute in float32 anyway).
    """
    norms = {id(p) for m in module.modules() if isinstance(m, (nn.GroupNorm, nn.LayerNorm))
             for p in m.parameters(recurse=False)}
    for p in module.parameters():
        if id(p) not in norms:
            p.data = p.data.to(dtype)
