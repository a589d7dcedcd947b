"""Training terms of the binding research: a kind pixel weight and two
losses on the text attention (not part of GLIDE).

:func:`token_grounding_loss` is the token loss of TokenCompose (Wang et al.,
2024, "TokenCompose: Text-to-Image Diffusion with Token-level Supervision"):
for a word of the caption whose object has a known mask,
``(1 - share of the word's attention that falls inside the mask)^2``, the
attention summed over the pixels and averaged over the heads. A word that
pixels outside its object attend to costs; one that only its own object's
pixels attend to costs nothing. Why: a model that learns which words are in
the caption but not which shape each belongs to lets each shape's pixels
attend to every shape's kind word; the loss says which pixels each word
belongs to.

:func:`off_phrase_attention_loss` asks the same from the pixels' side: the
share of the text attention of an object's box that goes to another
object's words or to the padding. Why: the word loss binds the words but
leaves every pixel free to read the padding, which holds every kind.

:class:`TokenGroundingLoss` and :class:`OffPhraseLoss` put them into
``Glide``'s training loss (``train_cfg.aux_losses``), on the attention
recorded by :func:`~.attention.recorded_text_attention`;
:class:`KindPixelWeight` weighs the pixels a shape's kind decides
(``train_cfg.pixel_weights``). Configs that use them add
``'projects.glide.research'`` to ``custom_imports``.
"""
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmagic.registry import MODELS

from ..models.training import RETIRED_TRAIN_CFG_KEYS, AuxiliaryLoss, AuxLossInputs, PixelWeight
from .attention import recorded_text_attention

RETIRED_TRAIN_CFG_KEYS.update(
    kind_weight="pixel_weights=[dict(type='KindPixelWeight', weight=...), ...]",
    grounding_weight="aux_losses=[dict(type='TokenGroundingLoss', weight=..., sides=..., max_timestep=...)]",
    grounding_sides="TokenGroundingLoss(sides=...) / OffPhraseLoss(sides=...) in aux_losses",
    grounding_max_timestep="TokenGroundingLoss(max_timestep=...) / OffPhraseLoss(max_timestep=...) in "
                           'aux_losses',
    off_phrase_weight="aux_losses=[dict(type='OffPhraseLoss', weight=..., sides=..., max_timestep=...)]")


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


@MODELS.register_module()
class KindPixelWeight(PixelWeight):
    """``weight * batch['kind_mask']`` (B, 1, H, W) in [0, 1]: the pixels
    whose colour depends on which kind of shape is drawn (the ``KindMask``
    dataset transform), so that a shape of the wrong kind costs more than
    its few background pixels."""

    def __call__(self, x0: torch.Tensor, batch: dict) -> torch.Tensor:
        kind_mask = batch.get('kind_mask')
        if kind_mask is None:
            raise ValueError("KindPixelWeight needs a 'kind_mask' (B, 1, H, W) in the batch, e.g. "
                             'from the KindMask dataset transform')
        expected = (x0.shape[0], 1, *x0.shape[2:])
        if tuple(kind_mask.shape) != expected:
            raise ValueError(f'kind_mask must be {expected} (B, 1, H, W) like the images, got '
                             f'{tuple(kind_mask.shape)}')
        return self.weight * kind_mask.to(x0)


class _TextAttentionLoss(AuxiliaryLoss):
    """An auxiliary loss on the text attention of the blocks on feature maps
    of the sides ``sides`` (None: all), over the rows whose prompt was kept
    and, if ``max_timestep`` is set, whose timestep is at most that."""

    def __init__(self, weight: float, name: str, sides: Optional[Sequence[int]] = None,
                 max_timestep: Optional[int] = None):
        super().__init__(weight, name)
        if max_timestep is not None and (isinstance(max_timestep, bool) or not isinstance(max_timestep, int)
                                         or max_timestep < 0):
            raise ValueError(f'{type(self).__name__}: max_timestep must be None or an int >= 0, got '
                             f'{max_timestep!r}')
        self.sides = None if sides is None else tuple(sides)
        self.max_timestep = max_timestep

    def watch(self, unet):
        return recorded_text_attention(unet, self.sides)

    def _batch(self, inputs: AuxLossInputs, device: torch.device):
        """``grounding_tokens`` and ``grounding_masks`` of the batch on ``device``,
        with errors that name what is missing."""
        missing = [k for k in ('grounding_tokens', 'grounding_masks') if k not in inputs.batch]
        if missing:
            raise ValueError(f"{type(self).__name__} needs {' and '.join(map(repr, missing))} in the "
                             'batch, e.g. from the ShapeGroundingTargets dataset transform')
        if not inputs.observed:
            raise ValueError(f'{type(self).__name__} needs text attention blocks; the UNet has none '
                             f'on feature maps of the sides {self.sides}')
        return inputs.batch['grounding_tokens'].to(device), inputs.batch['grounding_masks'].to(device)

    def _mean_over_blocks(self, inputs: AuxLossInputs, block_loss: Callable) -> torch.Tensor:
        """The mean over the recorded blocks of the loss ``block_loss(weights)``
        returns with its ``valid`` mask (both (B, ...)), each averaged over
        its valid entries in the kept rows."""
        keep = inputs.keep
        if self.max_timestep is not None:
            keep = keep & (inputs.t <= self.max_timestep)
        attention: List[Tuple[int, torch.Tensor]] = inputs.observed
        total = 0.
        for _, weights in attention:
            loss, valid = block_loss(weights)
            valid = valid & keep.to(valid.device).view(-1, *[1] * (valid.dim() - 1))
            total = total + (loss * valid).sum() / valid.sum().clamp(min=1)
        return total / len(attention)


@MODELS.register_module()
class TokenGroundingLoss(_TextAttentionLoss):
    """``loss_grounding``: the mean :func:`token_grounding_loss` of the words
    ``batch['grounding_tokens']`` ((B, S, W) text positions, -1 for none) on
    their objects' coverage ``batch['grounding_masks']`` (B, S, R, R), or on
    a region per word (B, S, W, R, R) (the ``ShapeGroundingTargets``
    dataset transform; with ``kind_region='box'`` the kind word on the
    shape's bounding box).

    Args:
        weight (float): the loss's weight beside the diffusion loss, >= 0.
        sides (tuple[int] | None): sides of the feature maps whose text
            attention counts (None: all).
        max_timestep (int | None): leave rows drawn at later timesteps out.
    """

    def __init__(self, weight: float, sides: Optional[Sequence[int]] = None,
                 max_timestep: Optional[int] = None):
        super().__init__(weight, 'grounding', sides, max_timestep)

    def forward(self, inputs: AuxLossInputs) -> torch.Tensor:
        positions, masks = self._batch(inputs, inputs.t.device)
        return self._mean_over_blocks(inputs, lambda weights: token_grounding_loss(weights, positions, masks))


@MODELS.register_module()
class OffPhraseLoss(_TextAttentionLoss):
    """``loss_off_phrase``: the mean :func:`off_phrase_attention_loss` of the
    objects of ``batch['grounding_tokens']`` ((B, S, W) text positions) on
    the region of each object's last word in ``batch['grounding_masks']``
    (B, S, W, R, R) (with ``ShapeGroundingTargets(kind_region='box')`` the
    shape's box, whose last word is the kind word).

    Args: as for :class:`TokenGroundingLoss`.
    """

    def __init__(self, weight: float, sides: Optional[Sequence[int]] = None,
                 max_timestep: Optional[int] = None):
        super().__init__(weight, 'off_phrase', sides, max_timestep)

    def forward(self, inputs: AuxLossInputs) -> torch.Tensor:
        positions, masks = self._batch(inputs, inputs.t.device)
        if masks.dim() != 5:
            raise ValueError("OffPhraseLoss needs a region per word in 'grounding_masks' (B, S, W, R, R), "
                             "e.g. ShapeGroundingTargets(kind_region='box'); got "
                             f'{tuple(masks.shape)}')
        boxes = masks[:, :, -1]
        return self._mean_over_blocks(
            inputs, lambda weights: off_phrase_attention_loss(weights, positions, boxes, inputs.token_mask))
