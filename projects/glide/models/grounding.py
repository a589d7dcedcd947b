"""Where a UNet's pixels look in the caption, and a loss that grounds words.

:func:`recorded_text_attention` records the attention weights of every text
attention block of a UNet during a forward pass (with autograd, so a loss can
be put on them). :func:`token_grounding_loss` is the token loss of
TokenCompose (Wang et al., 2024, "TokenCompose: Text-to-Image Diffusion with
Token-level Supervision"): for a word of the caption whose object has a known
mask, ``(1 - share of the word's attention that falls inside the mask)^2``,
the attention summed over the pixels and averaged over the heads. A word
that pixels outside its object attend to costs; one that only its own
object's pixels attend to costs nothing.

Why: a tiny GLIDE trained on two-shape scenes learns which words are in the
caption but not which shape each belongs to. At 16x16 each shape's pixels
attend to both shapes' kind words about equally (docs/default_model.md, "Why
the class lags"), so a circle named for one shape is as likely to be drawn as
the other. The loss tells the UNet which pixels each word belongs to.

:func:`off_phrase_attention_loss` asks the same from the pixels' side: the
share of the text attention of an object's box that goes to another object's
words or to the padding. Why: with the layout given, a shape whose box reads
only its own words of the caption draws its kind where one that reads the
whole caption does not (docs/default_model.md, "Why the class lags", the
own-phrase table); the word loss above binds the words but leaves every pixel
free to read the padding, which holds both kinds.
"""
from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .unet import TextAttentionBlock


@contextmanager
def recorded_text_attention(unet: nn.Module,
                            sides: Optional[Sequence[int]] = None) -> Iterator[List[Tuple[int, torch.Tensor]]]:
    """Record the text attention of ``unet``'s forward passes in the block.

    Yields a list that each forward of a text attention block (one with
    ``encoder_kv``) on a square feature map of a side in ``sides`` (None:
    any) extends by ``(side, weights)``: the side and
    :meth:`TextAttentionBlock.attention_weights`, (B, heads, side * side, T +
    side * side) float32, text positions first. The weights are computed
    again from the block's inputs, with autograd when it is on: that costs
    about as much as the block's own attention (on a CPU, 1-2x as much), so
    a training loss may want to pick its sides.
    """
    records = []

    def record(block, args, out):
        side = args[0].shape[-1]
        if sides is None or side in sides:
            records.append((side, block.attention_weights(*args)))

    hooks = [m.register_forward_hook(record) for m in unet.modules()
             if isinstance(m, TextAttentionBlock) and hasattr(m, 'encoder_kv')]
    try:
        yield records
    finally:
        for hook in hooks:
            hook.remove()


def _square_side(pixels: int) -> int:
    """The side of a square feature map of ``pixels`` pixels; an error if it is not square."""
    side = int(round(pixels ** 0.5))
    if side * side != pixels:
        raise ValueError(f'attention must be over a square feature map, got {pixels} pixels')
    return side


def _check_word_positions(positions: torch.Tensor, text: int) -> None:
    """An error if a word position (-1 for none) is not one of the ``text`` text positions."""
    if int(positions.max()) >= text:
        raise ValueError(f'word positions must be < the {text} text positions, got {int(positions.max())}')


def token_grounding_loss(attention: torch.Tensor, positions: torch.Tensor,
                         masks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-word grounding loss on one attention block.

    Args:
        attention (Tensor): (B, heads, side * side, K) attention weights,
            the first keys the T text positions (K = T + side * side).
        positions (Tensor): (B, S, W) int, the text positions of W words of
            each of S objects; -1 for none.
        masks (Tensor): (B, S, R, R) in [0, 1], each object's coverage of the
            image, or (B, S, W, R, R), a region for each word of each object
            (e.g. a shape's colour word on the shape, its kind word on the
            shape's box); averaged down to side x side.

    Returns:
        tuple: the loss (B, S, W), ``(1 - inside)^2`` where ``inside`` is the
        share of the word's attention (summed over the pixels, averaged over
        the heads) that falls on its object's coverage (or its own region);
        and ``valid`` (B, S, W) bool, the words that have a position (the
        loss is 0 elsewhere).
    """
    b, _, pixels, keys = attention.shape
    s, w = positions.shape[1:]
    side = _square_side(pixels)
    given = tuple(masks.shape)
    if masks.dim() == 4:
        masks = masks.unsqueeze(2)  # one region for all the words of an object
    if positions.shape[0] != b or masks.dim() != 5 or masks.shape[:2] != (b, s) or masks.shape[2] not in (1, w):
        raise ValueError(f'positions (B, S, W) and masks (B, S, R, R) or (B, S, W, R, R) must match the '
                         f'attention\'s B={b} and each other; got {tuple(positions.shape)} and '
                         f'{given}')
    _check_word_positions(positions, keys - pixels)
    valid = positions >= 0
    looks = attention.mean(1)  # (B, pixels, K)
    index = positions.clamp(min=0).reshape(b, 1, s * w).expand(b, pixels, s * w)
    on_word = looks.gather(2, index).transpose(1, 2).reshape(b, s, w, pixels)
    coverage = F.adaptive_avg_pool2d(masks.flatten(0, 2).to(looks), side).reshape(b, s, -1, pixels)
    inside = (on_word * coverage).sum(-1) / on_word.sum(-1).clamp(min=1e-12)
    loss = torch.where(valid, (1 - inside) ** 2, torch.zeros_like(inside))
    return loss, valid


def off_phrase_attention_loss(attention: torch.Tensor, positions: torch.Tensor, boxes: torch.Tensor,
                              token_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-object loss on one attention block: what its box reads off its phrase.

    Args:
        attention, positions (Tensor): as for :func:`token_grounding_loss`.
        boxes (Tensor): (B, S, R, R) in [0, 1], each object's box (or any
            region), averaged down to side x side.
        token_mask (Tensor): (B, T) bool, True on the caption's tokens
            (False on the padding).

    Returns:
        tuple: the loss (B, S) in [0, 1], the mean over the object's box
        (weighted by its coverage) of the share of a pixel's text attention
        (averaged over the heads) that goes to the other objects' words or to
        the padding; and ``valid`` (B, S) bool, the objects with a word and a
        box (the loss is 0 elsewhere).
    """
    b, _, pixels, keys = attention.shape
    s = positions.shape[1]
    text = keys - pixels
    side = _square_side(pixels)
    if positions.shape[0] != b or boxes.dim() != 4 or boxes.shape[:2] != (b, s) or \
            tuple(token_mask.shape) != (b, text):
        raise ValueError(f'positions (B, S, W), boxes (B, S, R, R) and token_mask (B, T) must match the '
                         f'attention\'s B={b}, T={text} and each other; got {tuple(positions.shape)}, '
                         f'{tuple(boxes.shape)} and {tuple(token_mask.shape)}')
    _check_word_positions(positions, text)
    has_word = positions >= 0
    words = (F.one_hot(positions.clamp(min=0), text) * has_word[..., None]).amax(2)  # (B, S, T)
    others = words.sum(1, keepdim=True) - words > 0
    off = (others | ~token_mask.bool()[:, None]).to(attention.dtype)  # (B, S, T)
    looks = attention.mean(1)[..., :text]  # (B, pixels, T)
    off_share = torch.einsum('bpt,bst->bsp', looks, off) / looks.sum(-1)[:, None].clamp(min=1e-12)
    coverage = F.adaptive_avg_pool2d(boxes.to(looks), side).flatten(2)  # (B, S, pixels)
    valid = has_word.any(-1) & (coverage.sum(-1) > 0)
    loss = (off_share * coverage).sum(-1) / coverage.sum(-1).clamp(min=1e-12)
    return torch.where(valid, loss, torch.zeros_like(loss)), valid
