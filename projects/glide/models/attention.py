"""GLIDE's text attention block and its attention processors.

The block holds the weights (norm, ``qkv``, ``encoder_kv``, ``proj_out``);
its ``processor`` computes the block's output from them. Swapping the
processor (``Text2ImUNet.set_attn_processor``, diffusers style) lets a caller
record or change the attention without touching the model's code.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import FP32GroupNorm


class SDPAAttnProcessor:
    """The default processor: ``scaled_dot_product_attention`` (the maths of
    GLIDE's einsum with the fp32 softmax, fused on GPUs), then the output
    projection and the residual."""

    def __call__(self, block: 'TextAttentionBlock', x: torch.Tensor,
                 text_states: Optional[torch.Tensor]) -> torch.Tensor:
        """x: (B, C, H, W); text_states: (B, text_width, T) or None -> (B, C, H, W)."""
        q, k, v = block.queries_keys_values(x, text_states)
        # fused kernels need unit stride on the channel axis
        return block.project_out(x, F.scaled_dot_product_attention(q.contiguous(), k.contiguous(),
                                                                   v.contiguous()))


class TextAttentionBlock(nn.Module):
    """Spatial self-attention whose keys/values are prefixed by text keys/values.

    ``qkv`` is head-interleaved (per head ``[q | k | v]``, ADM's legacy order)
    and ``encoder_kv`` per head ``[k | v]``; the text positions come first.
    ``processor`` (default :class:`SDPAAttnProcessor`) turns the block's
    input into its output: ``processor(block, x, text_states) -> (B, C, H, W)``,
    residual included.

    Args:
        channels (int): feature channels.
        num_head_channels (int): channels per head; -1 to use ``num_heads``.
        num_heads (int): number of heads when ``num_head_channels`` is -1.
        encoder_channels (int | None): text width; None for no text.
        position_size (int | None): side of the (square) feature map for a
            learned position embedding ``position_embedding`` (channels, side,
            side), added to the normalised features before ``qkv``; None (GLIDE)
            for none. It starts at zero, so a block gains it without changing
            its output.
    """

    def __init__(self, channels: int, num_head_channels: int = 64, num_heads: int = 1,
                 encoder_channels: Optional[int] = None, position_size: Optional[int] = None):
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f'{channels} channels are not divisible by {num_head_channels} '
                                 'channels per head')
            self.num_heads = channels // num_head_channels
        self.norm = FP32GroupNorm(32, channels)  # the UNet may regroup it (norm_groups)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        if encoder_channels is not None:
            self.encoder_kv = nn.Conv1d(encoder_channels, channels * 2, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        if position_size is not None:
            self.position_embedding = nn.Parameter(torch.zeros(channels, position_size, position_size))
        self.processor = SDPAAttnProcessor()

    def queries_keys_values(self, x: torch.Tensor, text_states: Optional[torch.Tensor]):
        """q (B, heads, H*W, ch) and k, v (B, heads, T + H*W, ch) of x (B, C,
        H, W), the text positions first (T = 0 without text)."""
        b, c, *spatial = x.shape
        heads = self.num_heads
        h = self.norm(x)
        if hasattr(self, 'position_embedding'):
            if tuple(spatial) != self.position_embedding.shape[1:]:
                raise ValueError(f'this attention block has a position embedding for '
                                 f'{tuple(self.position_embedding.shape[1:])} features, got {tuple(spatial)}')
            h = h + self.position_embedding.to(h.dtype)
        qkv = self.qkv(h.reshape(b, c, -1))
        q, k, v = qkv.reshape(b, heads, 3 * c // heads, -1).transpose(2, 3).split(c // heads, dim=3)
        if text_states is not None:
            kv = self.encoder_kv(text_states).reshape(b, heads, 2 * c // heads, -1).transpose(2, 3)
            ek, ev = kv.split(c // heads, dim=3)
            k = torch.cat([ek, k], dim=2)
            v = torch.cat([ev, v], dim=2)
        return q, k, v

    def project_out(self, x: torch.Tensor, mixed: torch.Tensor) -> torch.Tensor:
        """The block's output for input x (B, C, H, W) and mixed values (B,
        heads, H*W, ch): ``x + proj_out(mixed)``."""
        b, c, *spatial = x.shape
        h = self.proj_out(mixed.transpose(2, 3).reshape(b, c, -1))
        return x + h.reshape(b, c, *spatial)

    def forward(self, x: torch.Tensor, text_states: Optional[torch.Tensor]) -> torch.Tensor:
        """x: (B, C, H, W); text_states: (B, text_width, T) or None."""
        return self.processor(self, x, text_states)

    def attention_weights(self, x: torch.Tensor, text_states: Optional[torch.Tensor]) -> torch.Tensor:
        """The weights the default processor mixes the values with, for analysis:
        (B, heads, H*W, T + H*W), each pixel's softmax over the T text
        positions, then the pixels; computed in float32."""
        q, k, _ = self.queries_keys_values(x, text_states)
        return self.weights_from(q, k)

    @staticmethod
    def weights_from(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """The float32 softmax weights (B, heads, N, K) of queries q (B,
        heads, N, ch) over keys k (B, heads, K, ch), as the default processor uses them."""
        return (q.float() @ k.float().transpose(2, 3) / q.shape[-1] ** 0.5).softmax(dim=-1)
