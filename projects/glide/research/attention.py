"""Recording and changing the text attention of a UNet, through its attention processors.

:func:`recorded_text_attention` gives every text attention block of a
``Text2ImUNet`` a :class:`RecordingAttnProcessor` for the duration of a
``with`` block, so a loss or a probe can read (and backpropagate through)
where each pixel looks in the caption; :func:`wrapped_attn_processors` does
the same for any processor that wraps the block's own (the probe's
:class:`KindRoutingAttnProcessor` and :class:`OwnPhraseAttnProcessor`). The
blocks' previous processors come back afterwards.
"""
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn


class RecordingAttnProcessor:
    """Runs ``inner`` (the block's own processor) and appends ``(side,
    weights)`` to ``records`` for calls with text on a square feature map of
    a side in ``sides`` (None: any): the side and
    :meth:`~projects.glide.models.attention.TextAttentionBlock.attention_weights`,
    (B, heads, side * side, T + side * side) float32, text positions first.

    The weights are computed again from the block's inputs, with autograd
    when it is on: that costs about as much as the block's own attention
    (on a CPU, 1-2x as much), so a training loss may want to pick its sides.
    """

    def __init__(self, records: List[Tuple[int, torch.Tensor]], inner: Callable,
                 sides: Optional[Sequence[int]] = None):
        self.records, self.inner, self.sides = records, inner, sides

    def __call__(self, block, x: torch.Tensor, text_states: Optional[torch.Tensor]) -> torch.Tensor:
        out = self.inner(block, x, text_states)
        side = x.shape[-1]
        if text_states is not None and (self.sides is None or side in self.sides):
            self.records.append((side, block.attention_weights(x, text_states)))
        return out


@contextmanager
def recorded_text_attention(unet: nn.Module,
                            sides: Optional[Sequence[int]] = None) -> Iterator[List[Tuple[int, torch.Tensor]]]:
    """Record the text attention of ``unet``'s forward passes in the block.

    Yields the list that each text attention forward on a feature map of a
    side in ``sides`` (None: any) extends by ``(side, weights)`` (see
    :class:`RecordingAttnProcessor`), in forward order.
    """
    records = []
    with wrapped_attn_processors(unet, lambda inner: RecordingAttnProcessor(records, inner, sides)):
        yield records


@contextmanager
def wrapped_attn_processors(unet: nn.Module, wrap: Callable[[Callable], Callable]) -> Iterator[None]:
    """In the block, each text attention block of ``unet`` runs
    ``wrap(its processor)``; afterwards its processor is back."""
    previous = unet.attn_processors
    unet.set_attn_processor({name: wrap(inner) for name, inner in previous.items()})
    try:
        yield
    finally:
        unet.set_attn_processor(previous)


def mix_values(block, x: torch.Tensor, weights: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """A text attention block's output for its input x (B, C, H, W), its
    values v (B, heads, K, ch) and changed attention ``weights`` (B, heads,
    H*W, K), renormalised here over the keys; mixed in float32 without a
    fused kernel (analysis only)."""
    weights = weights / weights.sum(-1, keepdim=True)
    return block.project_out(x, (weights @ v.float()).to(v.dtype))


class KindRoutingAttnProcessor:
    """Routes each shape's kind word by its colour word on the first B rows of
    a batch (the conditional half under guidance): at each pixel, shape i's
    kind word gets 2 x the pixel's share of its attention to the two colour
    words that goes to shape i's colour word (averaged over heads), and the
    weights are renormalised. Calls without text go to ``inner``.

    ``positions``: (B, 2, 2) int, the text positions of each shape's colour
    word and kind word (``shape_word_positions``).
    """

    def __init__(self, positions: torch.Tensor, inner: Callable):
        self.positions, self.inner = positions, inner

    def __call__(self, block, x: torch.Tensor, text_states: Optional[torch.Tensor]) -> torch.Tensor:
        if text_states is None:
            return self.inner(block, x, text_states)
        p = self.positions
        c1, k1, c2, k2 = p[:, 0, 0], p[:, 0, 1], p[:, 1, 0], p[:, 1, 1]
        rows = torch.arange(len(p))
        q, k, v = block.queries_keys_values(x, text_states)
        weights = block.weights_from(q, k)
        routed = weights[:len(rows)]  # (B, heads, H*W, T + H*W), a view
        on_c1 = routed[rows, :, :, c1].mean(1)  # (B, H*W), over heads
        on_c2 = routed[rows, :, :, c2].mean(1)
        share = (on_c1 / (on_c1 + on_c2).clamp(min=1e-12))[:, None]  # (B, 1, H*W)
        routed[rows, :, :, k1] = routed[rows, :, :, k1] * (2 * share)
        routed[rows, :, :, k2] = routed[rows, :, :, k2] * (2 - 2 * share)
        return mix_values(block, x, weights, v)


class OwnPhraseAttnProcessor:
    """Each shape's box reads only its own phrase, on the first B rows of a
    batch (the conditional half under guidance).

    The text states are 3T wide: the caption's T positions, then each
    shape's one-shape caption's (the probe's ``with_phrase_states``). A pixel
    inside shape i's box (``boxes[side]``, (B, 2, side * side) bool) reads
    shape i's positions (both shapes' where the boxes overlap), every other
    pixel the caption's; rows beyond B read the caption's. Calls without text
    go to ``inner``.
    """

    def __init__(self, boxes: Dict[int, torch.Tensor], text: int, inner: Callable):
        self.boxes, self.text, self.inner = boxes, text, inner

    def __call__(self, block, x: torch.Tensor, text_states: Optional[torch.Tensor]) -> torch.Tensor:
        if text_states is None:
            return self.inner(block, x, text_states)
        text = self.text
        q, k, v = block.queries_keys_values(x, text_states)
        weights = block.weights_from(q, k)  # (B', heads, H*W, 3T + H*W)
        in_box = self.boxes[x.shape[-1]]  # (B, 2, H*W)
        rows = len(in_box)
        read = torch.zeros(len(x), in_box.shape[-1], weights.shape[-1], dtype=torch.bool)
        read[:, :, 3 * text:] = True  # the pixels
        read[:, :, :text] = True
        read[:rows, :, :text] = ~in_box.any(1)[..., None]
        for i in (0, 1):
            read[:rows, :, (i + 1) * text:(i + 2) * text] = in_box[:, i, :, None]
        return mix_values(block, x, weights * read[:, None], v)
