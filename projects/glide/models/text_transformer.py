"""GLIDE's text transformer (Nichol et al., 2021, section 2.3).

A GPT-style stack of pre-LayerNorm residual blocks without a causal mask
(every token attends to all 128 positions, padding included). Module and
parameter names follow openai/glide-text2im's ``xf.py`` (``resblocks.N.attn.c_qkv``,
``ln_1``, ``mlp.c_fc``, ...), which is also the layout of the OpenMMLab
checkpoints, so weights load by name.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import FP32LayerNorm


class TextSelfAttention(nn.Module):
    """Multi-head self-attention with GLIDE's fused, head-interleaved qkv.

    ``c_qkv`` produces, per token, ``heads`` groups of ``[q | k | v]`` (each
    ``width // heads`` wide).
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f'text width {width} is not divisible by {heads} heads')
        self.heads = heads
        self.c_qkv = nn.Linear(width, width * 3)
        self.c_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, width) -> (B, T, width)."""
        b, t, w = x.shape
        qkv = self.c_qkv(x).view(b, t, self.heads, -1).transpose(1, 2)  # (B, H, T, 3*ch)
        q, k, v = qkv.split(w // self.heads, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, T, ch)
        return self.c_proj(out.transpose(1, 2).reshape(b, t, w))


class TextMLP(nn.Module):
    """Two-layer GELU MLP, 4x expansion."""

    def __init__(self, width: int):
        super().__init__()
        self.c_fc = nn.Linear(width, width * 4)
        self.c_proj = nn.Linear(width * 4, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class TextResidualBlock(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = TextSelfAttention(width, heads)
        self.ln_1 = FP32LayerNorm(width)
        self.mlp = TextMLP(width)
        self.ln_2 = FP32LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TextTransformer(nn.Module):
    """A stack of ``layers`` :class:`TextResidualBlock` of width ``width``."""

    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList(TextResidualBlock(width, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, width) -> (B, T, width)."""
        for block in self.resblocks:
            x = block(x)
        return x
