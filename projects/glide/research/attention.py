"""Recording the text attention of a UNet, through its attention processors.

:func:`recorded_text_attention` gives every text attention block of a
``Text2ImUNet`` a :class:`RecordingAttnProcessor` for the duration of a
``with`` block, so a loss or a probe can read (and backpropagate through)
where each pixel looks in the caption; the blocks' previous processors come
back afterwards.
"""
from contextlib import contextmanager
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

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
    previous = unet.attn_processors
    unet.set_attn_processor({name: RecordingAttnProcessor(records, inner, sides)
                             for name, inner in previous.items()})
    try:
        yield records
    finally:
        unet.set_attn_processor(previous)
