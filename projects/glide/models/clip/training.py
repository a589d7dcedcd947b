"""Training the noise-aware CLIP on captioned images, with hard-negative captions.

:class:`NoisedCLIPModel` is the mmengine model around a :class:`NoisedCLIP`:
its loss is CLIP's symmetric contrastive loss on images noised by the
diffusion's forward process at uniformly drawn timesteps (what CLIP guidance
feeds the image tower), where each image also has to rank its caption above
its own hard negatives (the same caption with a binding or an attribute
changed). Its prediction scores each image's caption against those negatives
at fixed noise levels (:class:`CLIPRetrievalAccuracy` turns them into
accuracies).
"""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from mmagic.registry import MODELS
from mmengine.model import BaseModel

from ...checkpoint import check_state_dict
from ...images import to_uint8
from ..diffusion.gaussian import GaussianDiffusion
from ..training import build_module
from .model import NoisedCLIP

_NEGATIVES_LAYOUT = ('negatives must hold one list of K captions per item (B lists; the '
                     "batch of collate_fn=dict(type='collate_hard_negatives'))")


def _negatives_per_item(batch: dict, b: int) -> List[List[str]]:
    """The batch's hard negatives as B lists of K (K may be 0: no negatives)."""
    negatives = batch.get('negatives')
    if negatives is None:
        return [[] for _ in range(b)]
    if len(negatives) != b or len({len(n) for n in negatives}) != 1:
        raise ValueError(f'{_NEGATIVES_LAYOUT}, got {len(negatives)} lists for {b} items')
    return [list(n) for n in negatives]


@MODELS.register_module()
class NoisedCLIPModel(BaseModel):
    """A :class:`NoisedCLIP` trained contrastively on noised images.

    Args:
        clip (dict | NoisedCLIP): the CLIP; its fixed ``logit_scale`` is the
            inverse temperature of the loss.
        beta_schedule (str): noise schedule of the diffusion whose ``x_t`` the
            CLIP will see (``'squaredcos_cap_v2'``: GLIDE's base model); the
            number of steps is the image encoder's ``num_timesteps``.
        eval_timesteps (Sequence[int]): the timesteps :meth:`predict` scores at.
        data_preprocessor (dict | None): defaults to mmengine's
            ``BaseDataPreprocessor`` (moves the batch to the device).
    """

    def __init__(self,
                 clip: dict,
                 beta_schedule: str = 'squaredcos_cap_v2',
                 eval_timesteps: Sequence[int] = (0, 250, 500, 750, 900),
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(data_preprocessor=data_preprocessor or dict(type='BaseDataPreprocessor'),
                         init_cfg=init_cfg)
        self.clip = build_module(MODELS, clip)
        if not isinstance(self.clip, NoisedCLIP):
            raise TypeError(f'clip must build a NoisedCLIP, got {type(self.clip).__name__}')
        num_timesteps = self.clip.image_encoder.num_timesteps
        self.diffusion = GaussianDiffusion.from_schedule(beta_schedule, num_timesteps)
        self.eval_timesteps = [int(t) for t in eval_timesteps]
        if not self.eval_timesteps or not all(0 <= t < num_timesteps for t in self.eval_timesteps):
            raise ValueError(f'eval_timesteps must be a non-empty list of timesteps in [0, '
                             f'{num_timesteps}), got {list(eval_timesteps)}')
        self._register_load_state_dict_pre_hook(self._check_checkpoint, with_module=False)

    def _check_checkpoint(self, state_dict, prefix, *args):
        """Refuse a checkpoint whose keys or shapes differ (mmengine's loader
        would only warn and leave a random CLIP)."""
        if not prefix:
            check_state_dict({k: v.shape for k, v in self.state_dict().items()}, state_dict)

    @property
    def device(self) -> torch.device:
        return self.clip.device

    def _text_embeddings(self, prompts: List[str], negatives: List[List[str]]) -> torch.Tensor:
        """(B, 1 + K, D) unit embeddings of each item's caption then its negatives."""
        texts = [text for prompt, negs in zip(prompts, negatives) for text in [prompt] + negs]
        z = self.clip.encode_text(*self.clip.tokenize(texts))
        return z.view(len(prompts), -1, z.shape[-1])

    def forward(self, inputs=None, data_samples=None, mode: str = 'tensor', **batch):
        """mmengine entry point; ``batch`` is a collated dataset batch.

        Args:
            mode (str): ``'loss'`` -> dict of losses (:meth:`loss`);
                ``'predict'`` -> per-item dicts (:meth:`predict`);
                ``'tensor'`` -> (B, len(eval_timesteps), 1 + K) logits.
            **batch: ``img`` (B, 3, S, S) in [-1, 1], ``prompt`` (B str),
                ``negatives`` (B lists of K str, optional for the loss),
                ``caption_matches`` (B, B) bool (optional), ``index``.
        """
        if inputs is not None:
            batch.setdefault('img', inputs)
        if mode == 'loss':
            return self.loss(batch)
        if mode == 'predict':
            return self.predict(batch)
        if mode == 'tensor':
            return torch.stack([item['logits'] for item in self.predict(batch)])
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")

    def loss(self, batch: dict) -> Dict[str, torch.Tensor]:
        """Contrastive losses on images noised at uniform timesteps.

        ``loss_image``: cross entropy of each image over [the B captions, its
        own K negatives], target its caption; ``loss_text``: of each caption
        over the B images, target its image. Captions that are true of
        another image (``caption_matches``) are left out of that image's
        terms. Also ``acc_hard``: % of images whose caption beats all their
        negatives (logged, not optimised).
        """
        x0 = batch['img'].to(self.device, torch.float32)
        b = x0.shape[0]
        negatives = _negatives_per_item(batch, b)
        t = torch.randint(0, self.diffusion.num_timesteps, (b, ), device=self.device)
        z_image = self.clip.encode_image(self.diffusion.q_sample(x0, t), t)
        z_text = self._text_embeddings(list(batch['prompt']), negatives)
        scale = self.clip.logit_scale.exp()
        pair_logits = scale * z_image @ z_text[:, 0].T  # (B images, B captions)
        matches = batch.get('caption_matches')
        if matches is not None:
            other = ~torch.eye(b, dtype=torch.bool, device=self.device)
            pair_logits = pair_logits.masked_fill(matches.to(self.device).bool() & other, float('-inf'))
        hard_logits = scale * torch.einsum('bd,bkd->bk', z_image, z_text[:, 1:])
        target = torch.arange(b, device=self.device)
        result = dict(loss_image=F.cross_entropy(torch.cat([pair_logits, hard_logits], 1), target),
                      loss_text=F.cross_entropy(pair_logits.T, target))
        if hard_logits.shape[1]:
            own = pair_logits.diagonal()[:, None]
            result['acc_hard'] = 100. * (own > hard_logits).all(1).float().mean().detach()
        return result

    @torch.no_grad()
    def predict(self, batch: dict) -> List[dict]:
        """Each image's logits for its caption and its hard negatives at every
        ``eval_timesteps`` (the same noise at each t, seeded by the item's
        ``index``, else its row).

        Returns:
            list[dict]: per item ``prompt``, ``index``, ``negatives``,
            ``negative_types`` (when given), ``timesteps`` (list of int),
            ``logits`` ((len(timesteps), 1 + K) float32 on the CPU; column 0
            the caption) and ``image`` (uint8 (3, S, S), the clean image).
        """
        x0 = batch['img'].to(self.device, torch.float32)
        b = x0.shape[0]
        negatives = _negatives_per_item(batch, b)
        if not negatives[0]:
            raise ValueError('predict needs hard negatives: add the HardNegativeCaptions transform')
        seeds = [int(s) for s in batch.get('index', range(b))]
        noise = torch.stack([torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(s))
                             for s in seeds]).to(self.device)
        z_text = self._text_embeddings(list(batch['prompt']), negatives)
        logits = torch.stack([
            self.clip.logit_scale.exp() * torch.einsum(
                'bd,bkd->bk', self.clip.encode_image(self.diffusion.q_sample(x0, t, noise), t), z_text)
            for t in self.eval_timesteps], dim=1).cpu()
        images = to_uint8(x0)
        types = batch.get('negative_types')
        return [dict(prompt=batch['prompt'][i], index=seeds[i], negatives=negatives[i],
                     timesteps=list(self.eval_timesteps), logits=logits[i], image=images[i],
                     **(dict(negative_types=list(types[i])) if types is not None else {}))
                for i in range(b)]
