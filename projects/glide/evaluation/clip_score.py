"""CLIP score of generated images: mean 100 x cos(CLIP image embedding, CLIP
text embedding of the prompt), in [-100, 100] (not clamped at 0).

The CLIP model is a local transformers ``CLIPModel`` folder (``config.json`` +
weights + tokenizer and image-processor files), e.g. one saved by
``save_pretrained``; nothing is ever downloaded. ``process`` takes dicts (or
data elements) with ``prompt`` (str) and ``image`` (uint8 (3, H, W) RGB).
"""
import json
import os.path as osp
from typing import Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from mmagic.registry import METRICS
from mmengine.logging import print_log

from projects.glide.images import to_hwc_uint8

from .samples import NetworkMetric, sample_field, sample_images

_CLIP_HINT = ('GlideCLIPScore needs local CLIP weights: pass '
              'clip_path=/path/to/clip (a transformers CLIPModel folder); '
              'nothing is downloaded')

def _check_clip_dir(clip_path) -> str:
    if clip_path is None:
        raise ValueError(f'clip_path is None. {_CLIP_HINT}.')
    clip_path = osp.expanduser(str(clip_path))
    if not osp.exists(clip_path):
        raise FileNotFoundError(
            f'clip_path {clip_path!r} does not exist. {_CLIP_HINT}.')
    if not osp.isdir(clip_path):
        raise ValueError(
            f'clip_path {clip_path!r} is a file, not a folder. {_CLIP_HINT}.')
    config = osp.join(clip_path, 'config.json')
    if not osp.isfile(config):
        raise ValueError(f'clip_path {clip_path!r} has no config.json, so it '
                         f'is not a CLIP checkpoint. {_CLIP_HINT}.')
    try:
        with open(config) as f:
            model_type = json.load(f).get('model_type')
    except (OSError, ValueError) as e:
        raise ValueError(f'cannot read {config!r} ({e}). {_CLIP_HINT}.')
    if model_type != 'clip':
        raise ValueError(
            f'clip_path {clip_path!r} holds a {model_type!r} model, not a '
            f'CLIP checkpoint (model_type "clip"). {_CLIP_HINT}.')
    return clip_path


def load_clip(clip_path, device='cpu'):
    """(model, tokenizer, image_processor) of a local CLIP folder, offline."""
    clip_path = _check_clip_dir(clip_path)
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel, CLIPTokenizer
    try:
        model = CLIPModel.from_pretrained(clip_path, local_files_only=True)
    except Exception as e:  # noqa: BLE001 -- re-raised with the hint
        raise ValueError(f'cannot load a CLIPModel from {clip_path!r} '
                         f'({type(e).__name__}: {e}). {_CLIP_HINT}.') from e
    try:
        if osp.isfile(osp.join(clip_path, 'vocab.json')):
            tokenizer = CLIPTokenizer.from_pretrained(
                clip_path, local_files_only=True)
        else:
            tokenizer = AutoTokenizer.from_pretrained(
                clip_path, local_files_only=True)
        image_processor = CLIPImageProcessor.from_pretrained(
            clip_path, local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise ValueError(
            f'cannot load the CLIP tokenizer / image processor from '
            f'{clip_path!r} ({type(e).__name__}: {e}); the folder needs the '
            'tokenizer files (vocab.json + merges.txt or tokenizer.json) and '
            'preprocessor_config.json, as written by '
            f'CLIPProcessor.save_pretrained. {_CLIP_HINT}.') from e
    return model.eval().requires_grad_(False).to(device), tokenizer, \
        image_processor


@METRICS.register_module()
class GlideCLIPScore(NetworkMetric):
    """CLIP score: mean over images of 100 x cos(image emb, prompt emb).

    Args:
        clip_path (str): local transformers ``CLIPModel`` folder holding also
            the tokenizer and image-processor files. Required; nothing is
            downloaded.
        batch_size (int): CLIP forward batch size. Default 32.
        device (str | torch.device): where CLIP runs. Default ``'cpu'``.
        collect_device, prefix: see :class:`mmengine.evaluator.BaseMetric`.

    ``compute_metrics`` returns ``score`` (mean, in [-100, 100]; NaN if no
    image) and ``count`` -- ``clip/score`` and ``clip/count`` once prefixed.
    """
    default_prefix = 'clip'

    def __init__(self,
                 clip_path: Optional[str] = None,
                 batch_size: int = 32,
                 device='cpu',
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(batch_size, device, collect_device, prefix)
        self.clip_path = _check_clip_dir(clip_path)
        self.model, self.tokenizer, self.image_processor = load_clip(
            self.clip_path, self.device)
        self.max_length = min(
            self.model.config.text_config.max_position_embeddings,
            getattr(self.tokenizer, 'model_max_length', 10**9))

    @torch.no_grad()
    def scores(self, images: Sequence, prompts: Sequence[str]) -> np.ndarray:
        """100 x cosine similarity of each (image, prompt) pair (float64)."""
        images = [to_hwc_uint8(img) for img in images]
        prompts = [str(p) for p in prompts]
        if len(images) != len(prompts):
            raise ValueError(f'{len(images)} images but {len(prompts)} '
                             'prompts')
        out = []
        for i in range(0, len(images), self.batch_size):
            imgs = images[i:i + self.batch_size]
            texts = prompts[i:i + self.batch_size]
            pixels = self.image_processor(
                images=imgs, return_tensors='pt')['pixel_values']
            tokens = self.tokenizer(
                texts,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors='pt')
            img_emb = self.model.get_image_features(
                pixel_values=pixels.to(self.device, self.model.dtype))
            txt_emb = self.model.get_text_features(
                input_ids=tokens['input_ids'].to(self.device),
                attention_mask=tokens['attention_mask'].to(self.device))
            img_emb = F.normalize(img_emb.double(), dim=-1)
            txt_emb = F.normalize(txt_emb.double(), dim=-1)
            out.append((100 * (img_emb * txt_emb).sum(-1)).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    def process(self, data_batch, data_samples: Sequence) -> None:
        prompts = []
        for sample in data_samples:
            prompt = sample_field(sample, 'prompt')
            if prompt is None:
                raise KeyError('GlideCLIPScore: data sample without a '
                               '"prompt" field')
            prompts.append(prompt)
        images = sample_images(data_samples, 'GlideCLIPScore')
        for s in self.scores(images, prompts):
            self.results.append(dict(score=float(s)))

    def compute_metrics(self, results: list) -> Dict[str, float]:
        if not results:
            print_log('GlideCLIPScore: no images were scored', 'current',
                      level=30)
            return dict(score=float('nan'), count=0)
        values = np.array([r['score'] for r in results], np.float64)
        return dict(score=float(values.mean()), count=len(values))
