"""The two towers of GLIDE's noise-aware CLIP: a causal text encoder and an
image encoder that also sees the diffusion timestep of its (noisy) input.

Architecture facts from openai/glide-text2im (MIT), ``glide_text2im/clip``
(``encoders.py``, ``config.yaml``): the text tower adds token and position
embeddings (no input norm) and reads its feature at the end token; the image
tower standardises 0..255 pixels with CLIP's channel statistics, embeds
patches with a bias-free convolution, prepends a learned per-timestep token
(a table indexed by the integer timestep, no sinusoid), normalises the
sequence, and reads its feature at that first token. Both end in a
LayerNorm and a bias-free projection to the joint embedding. Defaults are
the released model's (``clip/text-enc``, ``clip/image-enc``).
"""
from typing import Union

import torch
import torch.nn as nn

from .transformer import ClipBlock

# CLIP's pixel statistics on the 0..255 scale (constants, not in the checkpoints)
PIXEL_MEAN = (122.77093945, 116.74601272, 104.09373519)
PIXEL_STD = (68.50053285, 66.63215831, 70.32316309)


def _check_int(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f'{name} must be an int >= {minimum}, got {value!r}')


def _check_range(name: str, values: torch.Tensor, low: int, high: int) -> None:
    """Raise unless every entry of the integer tensor ``values`` lies in [low, high)."""
    if values.is_floating_point() or values.is_complex():
        raise TypeError(f'{name} must be an integer tensor, got {values.dtype}')
    if values.numel() and (int(values.min()) < low or int(values.max()) >= high):
        raise ValueError(f'{name} must lie in [{low}, {high}), got values from '
                         f'{int(values.min())} to {int(values.max())}')


class NoisedCLIPTextEncoder(nn.Module):
    """Caption tower: tokens -> raw (unnormalised) text feature.

    Args:
        width (int): transformer width (512 released).
        heads (int): attention heads (8 released).
        layers (int): transformer blocks (12 released).
        vocab_size (int): token table rows (65536; the tokenizer uses 49408).
        text_ctx (int): token positions (77).
        embed_dim (int): joint embedding width (512 released).
    """

    def __init__(self, width: int = 512, heads: int = 8, layers: int = 12, vocab_size: int = 65536,
                 text_ctx: int = 77, embed_dim: int = 512):
        super().__init__()
        for name, value in dict(width=width, heads=heads, layers=layers, vocab_size=vocab_size,
                                text_ctx=text_ctx).items():
            _check_int(f'text_encoder.{name}', value)
        _check_int('embed_dim', embed_dim)
        self.text_ctx = text_ctx
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Parameter(torch.empty(text_ctx, width))
        self.blocks = nn.ModuleList(ClipBlock(width, heads, causal=True) for _ in range(layers))
        self.final_norm = nn.LayerNorm(width, eps=1e-5)
        self.proj = nn.Linear(width, embed_dim, bias=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.01)

    def forward(self, tokens: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """Raw text features.

        Args:
            tokens (Tensor): (B, text_ctx) int64 CLIP token ids.
            lens (Tensor): (B,) int64 in [1, text_ctx]: tokens up to and
                including the end token (the feature is read at ``lens - 1``).

        Returns:
            Tensor: (B, embed_dim) float32.
        """
        if tokens.dim() != 2 or tokens.shape[1] != self.text_ctx:
            raise ValueError(f'tokens must have shape (B, {self.text_ctx}), got {tuple(tokens.shape)}')
        if lens.shape != tokens.shape[:1]:
            raise ValueError(f'lens must have shape ({tokens.shape[0]},) like the tokens\' batch, '
                             f'got {tuple(lens.shape)}')
        _check_range('tokens', tokens, 0, self.token_embedding.num_embeddings)
        _check_range('lens', lens, 1, self.text_ctx + 1)
        x = self.token_embedding(tokens) + self.position_embedding
        for block in self.blocks:
            x = block(x)
        x = x[torch.arange(x.shape[0], device=x.device), lens.to(x.device) - 1]
        return self.proj(self.final_norm(x))


class NoisedCLIPImageEncoder(nn.Module):
    """Image tower: a noisy image and its diffusion timestep -> raw image feature.

    Args:
        width (int): transformer width (768 released).
        heads (int): attention heads (12 released).
        layers (int): transformer blocks (12 released).
        image_size (int): input side (64).
        patch_size (int): patch side (4 released; 256 patches).
        num_timesteps (int): rows of the timestep table (1000).
        embed_dim (int): joint embedding width (512 released).
    """

    def __init__(self, width: int = 768, heads: int = 12, layers: int = 12, image_size: int = 64,
                 patch_size: int = 4, num_timesteps: int = 1000, embed_dim: int = 512):
        super().__init__()
        for name, value in dict(width=width, heads=heads, layers=layers, image_size=image_size,
                                patch_size=patch_size, num_timesteps=num_timesteps).items():
            _check_int(f'image_encoder.{name}', value)
        _check_int('embed_dim', embed_dim)
        if image_size % patch_size:
            raise ValueError(f'image_encoder.image_size {image_size} is not a multiple of '
                             f'image_encoder.patch_size {patch_size}')
        self.image_size, self.num_timesteps = image_size, num_timesteps
        self.patch_embedding = nn.Conv2d(3, width, patch_size, stride=patch_size, bias=False)
        self.time_embedding = nn.Embedding(num_timesteps, width)
        self.position_embedding = nn.Parameter(torch.empty(1 + (image_size // patch_size)**2, width))
        self.input_norm = nn.LayerNorm(width, eps=1e-5)
        self.blocks = nn.ModuleList(ClipBlock(width, heads, causal=False) for _ in range(layers))
        self.final_norm = nn.LayerNorm(width, eps=1e-5)
        self.proj = nn.Linear(width, embed_dim, bias=False)
        self.register_buffer('pixel_mean', torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('pixel_std', torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)
        nn.init.normal_(self.time_embedding.weight, std=width**-0.5)
        nn.init.normal_(self.position_embedding, std=width**-0.5)

    def forward(self, x: torch.Tensor, t: Union[int, torch.Tensor]) -> torch.Tensor:
        """Raw image features.

        Args:
            x (Tensor): (B, 3, image_size, image_size), [-1, 1] scale; noisy
                ``x_t`` goes in as is (nothing is clamped).
            t (int | Tensor): ORIGINAL diffusion timesteps in
                [0, num_timesteps): an int or (B,) / 0-d integer tensor.

        Returns:
            Tensor: (B, embed_dim) float32.
        """
        size = self.image_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, size, size):
            raise ValueError(f'x must have shape (B, 3, {size}, {size}), got {tuple(x.shape)}')
        t = torch.as_tensor(t, device=x.device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(x.shape[0])
        if t.shape != x.shape[:1]:
            raise ValueError(f'got {t.numel()} timesteps t for a batch of {x.shape[0]}')
        _check_range('t', t, 0, self.num_timesteps)
        pixels = (x.float() + 1) * 127.5
        h = self.patch_embedding((pixels - self.pixel_mean) / self.pixel_std)
        h = torch.cat([self.time_embedding(t)[:, None], h.flatten(2).transpose(1, 2)], dim=1)
        h = self.input_norm(h + self.position_embedding)
        for block in self.blocks:
            h = block(h)
        return self.proj(self.final_norm(h[:, 0]))
