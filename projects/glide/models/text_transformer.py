"""GLIDE's text transformer (Nichol et al., 2021, section 2.3).

A GPT-style stack of pre-LayerNorm residual blocks without a causal mask
(every token attends to all 128 positions, padding included). An optional
local window (not in GLIDE; see :func:`local_attention_mask`) keeps each
caption token to its neighbours. Module and
parameter names follow openai/glide-text2im's ``xf.py`` (``resblocks.N.attn.c_qkv``,
``ln_1``, ``mlp.c_fc``, ...), which is also the layout of the OpenMMLab
checkpoints, so weights load by name.
"""
from typing import Optional

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

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B, T, width) -> (B, T, width); ``attn_mask`` (B, 1, T, T) bool,
        True where query i may attend to key j, or None for all."""
        b, t, w = x.shape
        qkv = self.c_qkv(x).view(b, t, self.heads, -1).transpose(1, 2)  # (B, H, T, 3*ch)
        q, k, v = qkv.split(w // self.heads, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, T, ch)
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

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask)
        return x + self.mlp(self.ln_2(x))


def local_attention_mask(token_mask: torch.Tensor, window: int) -> torch.Tensor:
    """Which key each query may attend to when caption tokens stay local.

    A caption token attends only to caption tokens at most ``window``
    positions away; a padding position attends to every position, so the
    last position (the pooled ``xf_proj`` feature) still sums up the whole
    caption, like the global tokens of Longformer (Beltagy et al., 2020).
    After L blocks a caption token has seen ``L * window`` tokens to each
    side and nothing else: with ``window=1`` and two blocks, "square" in
    "a red circle above a blue square" sees "above a blue square on" and
    never "red".

    Args:
        token_mask (Tensor): (B, T) bool, True on caption tokens.
        window (int): how far a caption token sees, >= 0.

    Returns:
        Tensor: (B, 1, T, T) bool, True where query i may attend to key j.
    """
    positions = torch.arange(token_mask.shape[1], device=token_mask.device)
    near = (positions[:, None] - positions[None, :]).abs() <= window  # (T, T)
    caption_query = token_mask[:, :, None]
    allowed = ~caption_query | (near[None] & token_mask[:, None, :])
    return allowed[:, None]


class TextTransformer(nn.Module):
    """A stack of ``layers`` :class:`TextResidualBlock` of width ``width``.

    ``local_window`` (None in GLIDE): see :func:`local_attention_mask`.
    """

    def __init__(self, width: int, layers: int, heads: int, local_window: Optional[int] = None):
        super().__init__()
        if local_window is not None and (isinstance(local_window, bool) or not isinstance(local_window, int)
                                         or local_window < 0):
            raise ValueError(f'local_window must be None or an int >= 0, got {local_window!r}')
        self.local_window = local_window
        self.resblocks = nn.ModuleList(TextResidualBlock(width, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor, token_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B, T, width) -> (B, T, width).

        ``token_mask`` (B, T) bool, True on caption tokens, is needed (and
        only used) with a ``local_window``.
        """
        attn_mask = None
        if self.local_window is not None:
            if token_mask is None:
                raise ValueError('a text transformer with a local_window needs the token mask')
            attn_mask = local_attention_mask(token_mask, self.local_window)
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x
