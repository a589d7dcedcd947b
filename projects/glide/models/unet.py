"""GLIDE's text-conditioned ADM UNets: base, super-resolution and inpainting.

Architecture facts come from Nichol et al. (2021) and openai/glide-text2im
(``unet.py``, ``text2im_model.py``): an ADM UNet (Dhariwal & Nichol, 2021) with
scale-shift residual blocks, residual up/down-sampling and attention whose keys
and values are prefixed with the projected text tokens; the pooled text
feature (last token after the final LayerNorm) is added to the timestep
embedding.

Why not mmagic's ``DenoisingUnet``: its attention block has no text
keys/values, and mmagic's own GLIDE UNet lives in an uninstallable project
folder. The module names here reproduce that project's layout exactly
(``in_blocks.N.M.conv_1.2``, ``norm_with_embedding.embedding_layer.1``,
``out.gn``, ...), so the OpenMMLab LAION checkpoints load strictly and
openai's checkpoints convert by renaming only.

All tensors are NCHW; images live in [-1, 1].
"""
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmagic.registry import MODELS

from .attention import TextAttentionBlock
from .layers import FP32GroupNorm, FP32LayerNorm, cast_except_norms, timestep_embedding
from .text_transformer import TextTransformer

DEFAULT_CHANNEL_MULT = {64: (1, 2, 3, 4), 128: (1, 1, 2, 3, 4), 256: (1, 1, 2, 2, 4, 4)}


def _group_norm(channels: int) -> FP32GroupNorm:
    return FP32GroupNorm(32, channels)


class EmbedSequential(nn.Sequential):
    """Sequential that hands the timestep embedding and text states to the
    blocks that use them."""

    def forward(self, h, emb, text_states):
        for layer in self:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, TextAttentionBlock):
                h = layer(h, text_states)
            else:
                h = layer(h)
        return h


class NormWithEmbedding(nn.Module):
    """GroupNorm modulated by the timestep embedding: ``norm(h) * (1 + scale) + shift``."""

    def __init__(self, channels: int, emb_channels: int):
        super().__init__()
        self.norm = _group_norm(channels)
        self.embedding_layer = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * channels))

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.embedding_layer(emb).to(h.dtype)[..., None, None].chunk(2, dim=1)
        return self.norm(h) * (1 + scale) + shift


class ResBlock(nn.Module):
    """ADM residual block with scale-shift norm and optional 2x up/down-sampling.

    Args:
        in_channels (int): input channels.
        emb_channels (int): timestep embedding width.
        out_channels (int): output channels.
        dropout (float): dropout before the second conv.
        resample (str | None): ``'up'`` (nearest 2x), ``'down'`` (2x2 average
            pool) or None.
    """

    def __init__(self, in_channels: int, emb_channels: int, out_channels: int, dropout: float = 0.,
                 resample: Optional[str] = None):
        super().__init__()
        self.conv_1 = nn.Sequential(_group_norm(in_channels), nn.SiLU(),
                                    nn.Conv2d(in_channels, out_channels, 3, padding=1))
        self.norm_with_embedding = NormWithEmbedding(out_channels, emb_channels)
        self.conv_2 = nn.Sequential(nn.SiLU(), nn.Dropout(dropout),
                                    nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.shortcut = (nn.Identity() if in_channels == out_channels else
                         nn.Conv2d(in_channels, out_channels, 1))
        self.resample = resample

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == 'up':
            return F.interpolate(x, scale_factor=2, mode='nearest')
        if self.resample == 'down':
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.resample:
            h = self.conv_1[-1](self._resample(self.conv_1[:-1](x)))
            x = self._resample(x)
        else:
            h = self.conv_1(x)
        h = self.conv_2(self.norm_with_embedding(h, emb))
        return self.shortcut(x) + h


class TimeEmbedding(nn.Module):
    """MLP on the sinusoidal timestep embedding (``blocks`` = Linear, SiLU, Linear)."""

    def __init__(self, base_channels: int, emb_channels: int):
        super().__init__()
        self.base_channels = base_channels
        self.blocks = nn.Sequential(
            nn.Linear(base_channels, emb_channels), nn.SiLU(), nn.Linear(emb_channels, emb_channels))

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(timesteps, self.base_channels)
        return self.blocks(emb.to(self.blocks[0].weight.dtype))


class OutputHead(nn.Module):
    """GroupNorm, SiLU, 3x3 conv to the output channels."""

    def __init__(self, channels: int, out_channels: int):
        super().__init__()
        self.gn = _group_norm(channels)
        self.act = nn.SiLU()
        self.conv = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.conv(self.act(self.gn(h)))


@MODELS.register_module()
class Text2ImUNet(nn.Module):
    """GLIDE's 64x64 text-to-image UNet with its text transformer.

    Args:
        image_size (int): training resolution (64 base, 256 upsampler); picks
            the default ``channel_mult`` and the attention levels.
        base_channels (int): channels of the first level (openai ``num_channels``).
        in_channels (int): image channels (3). Subclasses add their
            conditioning channels on top.
        out_channels (int): 6 = eps (3) + learned variance interpolation (3).
        resblocks_per_downsample (int): residual blocks per level
            (openai ``num_res_blocks``).
        channel_mult (tuple[int] | None): per-level multipliers; None for the
            default of ``image_size``.
        attention_res (tuple[int]): resolutions with attention, e.g. (32, 16, 8).
        num_head_channels (int): channels per attention head (64); -1 uses
            ``num_heads``.
        num_heads (int): heads when ``num_head_channels`` is -1.
        dropout (float): residual-block dropout.
        text_ctx (int): token positions (128).
        xf_width, xf_layers, xf_heads (int): text transformer size (512, 16, 8).
        xf_final_ln (bool): LayerNorm after the transformer.
        xf_padding (bool): learned embedding replaces padded positions.
        xf_local_window (int | None): keep each caption token's attention
            to tokens at most this far away (None in GLIDE: all tokens); see
            :func:`~.text_transformer.local_attention_mask`.
        n_vocab (int): token vocabulary (50257, GPT-2 BPE).
        dtype (str): ``'fp32'`` (default), ``'fp16'`` or ``'bf16'`` weights and
            activations; normalisation stays float32.
        norm_groups (int): groups of every GroupNorm (GLIDE: 32). Each
            group's spatial mean is normalised away, so with one channel per
            group (32 groups on a 32-channel level) the output head cannot
            shift an image's overall colour, which the eps prediction must
            do at high noise: narrow models need fewer groups.
        attention_position (bool): give every attention block a learned
            position embedding of its resolution (False in GLIDE). Attention
            is blind to where a pixel is, and a small conv net learns absolute
            position only faintly (from its zero padding), so at high noise,
            where the input says nothing about the layout, a small model cannot
            put "on the left" on the left without it.
    """

    #: the input stacks this many ``in_channels``-wide images (noisy image + conditioning)
    image_groups = 1
    #: plus this many mask channels
    mask_channels = 0

    def __init__(self,
                 image_size: int = 64,
                 base_channels: int = 192,
                 in_channels: int = 3,
                 out_channels: int = 6,
                 resblocks_per_downsample: int = 3,
                 channel_mult: Optional[Sequence[int]] = None,
                 attention_res: Sequence[int] = (32, 16, 8),
                 num_head_channels: int = 64,
                 num_heads: int = 1,
                 dropout: float = 0.,
                 text_ctx: int = 128,
                 xf_width: int = 512,
                 xf_layers: int = 16,
                 xf_heads: int = 8,
                 xf_final_ln: bool = True,
                 xf_padding: bool = True,
                 xf_local_window: Optional[int] = None,
                 n_vocab: int = 50257,
                 dtype: str = 'fp32',
                 norm_groups: int = 32,
                 attention_position: bool = False):
        super().__init__()
        if channel_mult is None:
            if image_size not in DEFAULT_CHANNEL_MULT:
                raise ValueError(f'no default channel_mult for image_size {image_size}; '
                                 f'give channel_mult explicitly')
            channel_mult = DEFAULT_CHANNEL_MULT[image_size]
        self.image_size = image_size
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.text_ctx = text_ctx
        self.xf_padding = xf_padding
        emb_channels = base_channels * 4
        attention_ds = {image_size // res for res in attention_res}

        # text encoder (names as in openai's Text2ImUNet)
        self.transformer = TextTransformer(xf_width, xf_layers, xf_heads, xf_local_window)
        self.final_ln = FP32LayerNorm(xf_width) if xf_final_ln else None
        self.token_embedding = nn.Embedding(n_vocab, xf_width)
        self.positional_embedding = nn.Parameter(torch.empty(text_ctx, xf_width).normal_(std=0.01))
        if xf_padding:
            self.padding_embedding = nn.Parameter(torch.empty(text_ctx, xf_width).normal_(std=0.01))
        self.transformer_proj = nn.Linear(xf_width, emb_channels)

        self.time_embedding = TimeEmbedding(base_channels, emb_channels)

        def attention(ch):
            side = image_size // ds if attention_position else None
            return TextAttentionBlock(ch, num_head_channels, num_heads, encoder_channels=xf_width,
                                      position_size=side)

        total_in = in_channels * self.image_groups + self.mask_channels
        ch = int(channel_mult[0] * base_channels)
        self.in_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(total_in, ch, 3, padding=1))])
        skip_channels = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(resblocks_per_downsample):
                layers = [ResBlock(ch, emb_channels, int(mult * base_channels), dropout)]
                ch = int(mult * base_channels)
                if ds in attention_ds:
                    layers.append(attention(ch))
                self.in_blocks.append(EmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.in_blocks.append(EmbedSequential(
                    ResBlock(ch, emb_channels, ch, dropout, resample='down')))
                skip_channels.append(ch)
                ds *= 2

        self.mid_blocks = EmbedSequential(
            ResBlock(ch, emb_channels, ch, dropout), attention(ch), ResBlock(ch, emb_channels, ch, dropout))

        self.out_blocks = nn.ModuleList()
        #: values in the largest feature map of one batch row, a decoder block's input with its skip
        #: (sizes slicing, ``Glide.set_rows_per_call``)
        self.largest_feature_numel = 0
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(resblocks_per_downsample + 1):
                in_ch = ch + skip_channels.pop()
                self.largest_feature_numel = max(self.largest_feature_numel, in_ch * (image_size // ds) ** 2)
                layers = [ResBlock(in_ch, emb_channels, int(base_channels * mult), dropout)]
                ch = int(base_channels * mult)
                if ds in attention_ds:
                    layers.append(attention(ch))
                if level and i == resblocks_per_downsample:
                    layers.append(ResBlock(ch, emb_channels, ch, dropout, resample='up'))
                    ds //= 2
                self.out_blocks.append(EmbedSequential(*layers))

        self.out = OutputHead(ch, out_channels)
        self._set_norm_groups(norm_groups)
        self.set_dtype(dtype)

    def _set_norm_groups(self, groups: int) -> None:
        if groups < 1:
            raise ValueError(f'norm_groups must be positive, got {groups}')
        norms = [m for m in self.modules() if isinstance(m, FP32GroupNorm)]
        bad = sorted({m.num_channels for m in norms if m.num_channels % groups})
        if bad:
            raise ValueError(f'norm_groups={groups} must divide the channels of every '
                             f'GroupNorm, which are {bad} here')
        for norm in norms:
            norm.num_groups = groups

    # ------------------------------------------------------------------ dtype
    def set_dtype(self, dtype: str) -> 'Text2ImUNet':
        """Cast weights to ``'fp32'``, ``'fp16'`` or ``'bf16'`` (norms stay fp32)."""
        table = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}
        if dtype not in table:
            raise ValueError(f"dtype must be one of {sorted(table)}, got {dtype!r}")
        cast_except_norms(self, table[dtype])
        return self

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the convolutions and linear layers."""
        return self.token_embedding.weight.dtype

    # -------------------------------------------------------------- attention
    def text_attention_blocks(self) -> Dict[str, TextAttentionBlock]:
        """The text attention blocks by module path (``'mid_blocks.1'``, ...), in forward order."""
        return {name: m for name, m in self.named_modules() if isinstance(m, TextAttentionBlock)}

    @property
    def attn_processors(self) -> Dict[str, Callable]:
        """Each text attention block's processor, by module path."""
        return {name: block.processor for name, block in self.text_attention_blocks().items()}

    def set_attn_processor(self, processor: Union[Callable, Dict[str, Callable]]) -> None:
        """Give every text attention block ``processor``, or each block its
        entry of a dict keyed like :attr:`attn_processors` (all blocks)."""
        blocks = self.text_attention_blocks()
        if isinstance(processor, dict):
            missing, unknown = sorted(set(blocks) - set(processor)), sorted(set(processor) - set(blocks))
            if missing or unknown:
                raise ValueError(f'set_attn_processor needs one processor per text attention block: '
                                 f'missing {missing}, unknown {unknown}')
        for name, block in blocks.items():
            block.processor = processor[name] if isinstance(processor, dict) else processor

    # ------------------------------------------------------------------- text
    def encode_text(self, tokens: torch.Tensor, mask: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Run the text transformer once.

        Args:
            tokens (Tensor): (B, text_ctx) int token ids.
            mask (Tensor | None): (B, text_ctx) bool, True on real tokens;
                required when ``xf_padding``.

        Returns:
            dict: ``xf_proj`` (B, 4*base_channels), the pooled feature added to
            the timestep embedding, and ``xf_out`` (B, xf_width, text_ctx), the
            per-token states the attention layers attend to.
        """
        if tokens.dim() != 2 or tokens.shape[1] != self.text_ctx:
            raise ValueError(f'tokens must have shape (B, {self.text_ctx}), got {tuple(tokens.shape)}')
        x = self.token_embedding(tokens.long()) + self.positional_embedding[None]
        if self.xf_padding:
            if mask is None:
                raise ValueError('this model uses a padding embedding: pass the token mask')
            x = torch.where(mask[..., None], x, self.padding_embedding[None])
        x = self.transformer(x.to(self.dtype), mask)
        if self.final_ln is not None:
            x = self.final_ln(x)
        return dict(xf_proj=self.transformer_proj(x[:, -1]), xf_out=x.permute(0, 2, 1))

    # ------------------------------------------------------------------- unet
    def _stack_inputs(self, x: torch.Tensor, **cond) -> torch.Tensor:
        """Concatenate the conditioning images to the noisy input (none here)."""
        if cond:
            raise TypeError(f'{type(self).__name__} got unexpected inputs {sorted(cond)}')
        return x

    def forward(self,
                x: torch.Tensor,
                timesteps: torch.Tensor,
                tokens: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None,
                text_emb: Optional[Dict[str, torch.Tensor]] = None,
                **cond) -> torch.Tensor:
        """Predict eps and the variance interpolation.

        Args:
            x (Tensor): (B, 3, H, W) noisy images.
            timesteps (Tensor): (B,) original timesteps in [0, 1000).
            tokens, mask (Tensor): (B, text_ctx) token ids and mask; or
            text_emb (dict): the output of :meth:`encode_text` (reuse it across
                steps to skip the text transformer).
            **cond: conditioning images of the subclasses (``low_res``,
                ``inpaint_image``, ``inpaint_mask``).

        Returns:
            Tensor: (B, 6, H, W) in ``x.dtype``.
        """
        if text_emb is None:
            if tokens is None:
                raise ValueError('pass tokens (and mask) or text_emb')
            text_emb = self.encode_text(tokens, mask)
        h = self._stack_inputs(x, **cond).to(self.dtype)
        emb = self.time_embedding(timesteps) + text_emb['xf_proj'].to(self.dtype)
        xf_out = text_emb['xf_out'].to(self.dtype)
        skips = []
        for block in self.in_blocks:
            h = block(h, emb, xf_out)
            skips.append(h)
        h = self.mid_blocks(h, emb, xf_out)
        for block in self.out_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, xf_out)
        return self.out(h).to(x.dtype)


def _upsample_to(low_res: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if low_res is None:
        raise ValueError('the upsampler needs low_res, the (B, 3, h, w) image to upsample')
    if low_res.shape[0] != x.shape[0] or low_res.shape[1] != x.shape[1]:
        raise ValueError(f'low_res {tuple(low_res.shape)} does not match x {tuple(x.shape)} '
                         'in batch size or channels')
    return F.interpolate(low_res.to(x.dtype), x.shape[-2:], mode='bilinear', align_corners=False)


def _inpaint_inputs(x, inpaint_image, inpaint_mask) -> Tuple[torch.Tensor, torch.Tensor]:
    if inpaint_image is None:
        inpaint_image = torch.zeros_like(x)
    if inpaint_mask is None:
        inpaint_mask = torch.zeros_like(x[:, :1])
    return inpaint_image.to(x.dtype) * inpaint_mask.to(x.dtype), inpaint_mask.to(x.dtype)


@MODELS.register_module()
class SuperResText2ImUNet(Text2ImUNet):
    """GLIDE's 64->256 upsampler: the noisy image stacked with the bilinearly
    upsampled low-resolution image (6 input channels)."""

    image_groups = 2

    def _stack_inputs(self, x, low_res=None):
        return torch.cat([x, _upsample_to(low_res, x)], dim=1)


@MODELS.register_module()
class InpaintText2ImUNet(Text2ImUNet):
    """GLIDE's base inpainting UNet: noisy image, masked source image and mask
    (7 input channels). ``inpaint_mask`` is 1 where the source is kept."""

    image_groups = 2
    mask_channels = 1

    def _stack_inputs(self, x, inpaint_image=None, inpaint_mask=None):
        return torch.cat([x, *_inpaint_inputs(x, inpaint_image, inpaint_mask)], dim=1)


@MODELS.register_module()
class SuperResInpaintText2ImUNet(Text2ImUNet):
    """GLIDE's inpainting upsampler: noisy image, masked source, mask and the
    upsampled low-resolution image, in that order (10 input channels)."""

    image_groups = 3
    mask_channels = 1

    def _stack_inputs(self, x, inpaint_image=None, inpaint_mask=None, low_res=None):
        return torch.cat([x, *_inpaint_inputs(x, inpaint_image, inpaint_mask),
                          _upsample_to(low_res, x)], dim=1)
