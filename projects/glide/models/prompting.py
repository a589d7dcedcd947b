"""Prompt-level guidance of ``Glide.infer``: composable prompts, and the
noise-aware CLIP's two uses (guidance gradient, re-ranking).

Composable prompts (Liu et al. 2022, *Compositional Visual Generation with
Composable Diffusion Models*, built on GLIDE): a prompt is one or more parts
joined by `` AND `` (weight ``+guidance_scale``) or `` NOT `` (weight
``-guidance_scale``), upper case with spaces around, e.g. ``"a red circle at
the top AND a blue square at the bottom NOT a green triangle"``; then

    eps = eps(uncond) + sum_i w_i * (eps(part_i) - eps(uncond)),

which for a prompt of one part is classifier-free guidance. The CLIP's text
vector of a prompt is ``sum_i sign_i * z_text(part_i)`` (its unit
embedding for one part), so CLIP guidance and re-ranking push toward the
AND parts and away from the NOT parts (the gradient of the summed
similarities is the similarity to the summed vector).
"""
import re
from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple

import torch

from .clip import NoisedCLIP

#: joins the parts of a composed prompt; the keyword sets the part's sign
_SPLIT = re.compile(r'(?<!\S)(AND|NOT)(?!\S)')


def parse_prompt(prompt: str) -> List[Tuple[str, float]]:
    """``prompt`` as its parts and signs: ``[(text, +1. | -1.), ...]``; a
    prompt without `` AND ``/`` NOT `` is one part ``[(prompt, 1.)]``."""
    pieces = _SPLIT.split(prompt)
    if len(pieces) == 1:
        return [(prompt, 1.)]
    parts = [(pieces[0].strip(), 1.)] + [(text.strip(), 1. if word == 'AND' else -1.)
                                         for word, text in zip(pieces[1::2], pieces[2::2])]
    if any(not text for text, _ in parts):
        raise ValueError(f'composed prompt {prompt!r} has an empty part: write it as '
                         "'part AND part NOT part', each part a non-empty text")
    return parts


def is_composed(prompts: Sequence[str]) -> bool:
    """True when some prompt has more than one part."""
    return any(len(parse_prompt(p)) > 1 for p in prompts)


def plain_text(prompt: str) -> str:
    """A composed prompt as one caption for a stage that is not composed (the
    upsampler): its AND parts joined by ' and ', its NOT parts dropped."""
    return ' and '.join(text for text, sign in parse_prompt(prompt) if sign > 0)


@dataclass
class Composition:
    """How the text rows of a composed base stage combine into each sample's eps.

    The stage's text states hold R part rows (every part of every prompt,
    prompt by prompt) then the B unconditional rows.

    Attributes:
        rows (LongTensor): (R,) the sample (0..B-1) each part row belongs to.
        weights (Tensor): (R,) float32 guidance weight of each part row
            (``+-guidance_scale``).
        first (LongTensor): (B,) the first part row of each sample, whose
            learned variance the sample keeps (as classifier-free guidance
            keeps the conditional half's).
    """
    rows: torch.Tensor
    weights: torch.Tensor
    first: torch.Tensor

    @classmethod
    def from_prompts(cls, prompts: Sequence[str], guidance_scale: float, device) -> Tuple['Composition', List[str]]:
        """The composition of B ``prompts`` and its R part texts (the rows of
        the text states before the B unconditional ones)."""
        rows, weights, texts, first = [], [], [], []
        for b, prompt in enumerate(prompts):
            first.append(len(texts))
            for text, sign in parse_prompt(prompt):
                rows.append(b)
                weights.append(sign * guidance_scale)
                texts.append(text)
        return cls(torch.tensor(rows, device=device), torch.tensor(weights, device=device),
                   torch.tensor(first, device=device)), texts

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        """(B, ...) per-sample tensor -> (R + B, ...) rows of the UNet batch."""
        return torch.cat([x[self.rows], x])

    def combine(self, out: torch.Tensor) -> torch.Tensor:
        """(R + B, 6, H, W) UNet output -> (B, 6, H, W): composed eps, first part's variance."""
        b = self.first.shape[0]
        eps, eps_u = out[:-b, :3], out[-b:, :3]
        delta = self.weights.view(-1, 1, 1, 1) * (eps - eps_u[self.rows])
        guided = eps_u + torch.zeros_like(eps_u).index_add_(0, self.rows, delta)
        return torch.cat([guided, out[self.first, 3:]], dim=1)


@torch.no_grad()
def clip_text_vectors(clip: NoisedCLIP, prompts: Sequence[str]) -> torch.Tensor:
    """(B, embed_dim) float32 CLIP text vector of each prompt: the unit text
    embedding of a one-part prompt, the signed sum over the parts of a composed one."""
    if not is_composed(prompts):
        return clip.encode_text(*clip.tokenize(list(prompts)))
    signs, texts = Composition.from_prompts(prompts, 1., clip.device)  # weights = the parts' signs
    z = clip.encode_text(*clip.tokenize(texts)) * signs.weights[:, None]
    return torch.zeros(len(prompts), z.shape[1], device=z.device).index_add_(0, signs.rows, z)


def clip_cond_fn(clip: NoisedCLIP, text_vectors: torch.Tensor, scale: float) -> Callable:
    """CLIP guidance's ``cond_fn(x_t, t) -> (B, 3, S, S)`` gradient (row b
    toward ``text_vectors[b]``), each call with its own float32 graph."""

    def cond_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return clip.guidance_grad(x, t, text_vectors, scale)

    return cond_fn


@torch.no_grad()
def rerank(clip: NoisedCLIP, candidates: torch.Tensor, text_vectors: torch.Tensor,
           num: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Keep each prompt's best of ``num`` candidates as the CLIP at t = 0 scores them.

    Args:
        candidates (Tensor): (B * num, 3, S, S) in [-1, 1], prompt b's
            candidates in rows ``b * num ... b * num + num - 1``.
        text_vectors (Tensor): (B, embed_dim) from :func:`clip_text_vectors`.

    Returns:
        tuple: the kept (B, 3, S, S) samples and the (B, num) float32 scores
        (the CLIP's logits ``exp(logit_scale) * z_text . z_image``).
    """
    b = text_vectors.shape[0]
    image = clip.encode_image(candidates.float(), 0)
    scores = clip.similarity(text_vectors.repeat_interleave(num, 0), image).view(b, num)
    best = scores.argmax(dim=1)
    return candidates.view(b, num, *candidates.shape[1:])[torch.arange(b), best], scores


def check_rerank(rerank) -> int:
    """``infer(rerank=N)`` as the number of candidates per prompt (None -> 1)."""
    if rerank is None:
        return 1
    if isinstance(rerank, bool) or not isinstance(rerank, int) or rerank < 1:
        raise ValueError(f'rerank (candidates per prompt, scored by the CLIP) must be None or an int '
                         f'>= 1, got {rerank!r}')
    return rerank


def per_candidate(x, batch_size: int, num: int):
    """A per-sample input with ``batch_size`` rows -> ``num`` copies of each row
    (prompt b's candidates are rows ``b * num ...``); others unchanged."""
    if num == 1 or x is None:
        return x
    if isinstance(x, list):
        return [v for v in x for _ in range(num)]
    if torch.is_tensor(x) and x.dim() > 0 and x.shape[0] == batch_size and batch_size > 1:
        return x.repeat_interleave(num, 0)
    return x
