"""The pre-LayerNorm transformer block shared by both encoders of the noise-aware CLIP.

Architecture facts from openai/glide-text2im (MIT), ``glide_text2im/clip``:
each block is an attention residual then an MLP residual, each owning its
LayerNorm (eps 1e-5); queries and values have a bias, keys none; the MLP is
4x wide with exact (erf) GELU. openai pads the context to a multiple of 32
and masks the padded keys; masked keys get exactly zero weight, so attention
over the real positions alone (causal for text, full for images) is the same
computation.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class ClipAttention(nn.Module):
    """``x + out_proj(attention(norm(x)))``; x (B, T, width) -> (B, T, width)."""

    def __init__(self, width: int, heads: int, causal: bool):
        super().__init__()
        if width % heads:
            raise ValueError(f'CLIP width {width} is not divisible by {heads} heads')
        self.heads, self.causal = heads, causal
        self.norm = nn.LayerNorm(width, eps=1e-5)
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, w = x.shape
        h = self.norm(x)
        q, k, v = (proj(h).view(b, t, self.heads, -1).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (B, heads, T, ch)
        return x + self.out_proj(out.transpose(1, 2).reshape(b, t, w))


class ClipMLP(nn.Module):
    """``x + fc2(gelu(fc1(norm(x))))`` with a 4x hidden width."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-5)
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class ClipBlock(nn.Module):
    """One transformer block: :class:`ClipAttention` then :class:`ClipMLP`."""

    def __init__(self, width: int, heads: int, causal: bool):
        super().__init__()
        self.attn = ClipAttention(width, heads, causal)
        self.mlp = ClipMLP(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.attn(x))
