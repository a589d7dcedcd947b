"""Reference-network metrics of generated images: CLIP score and FID.

Both metrics work strictly offline: the networks are loaded from local paths
given by the user and nothing is ever downloaded.

* :class:`GlideCLIPScore` -- mean cosine similarity x 100 between the CLIP
  image embedding of each generated image and the CLIP text embedding of its
  prompt (not clamped at 0, so it lies in [-100, 100]). The CLIP model is a
  transformers ``CLIPModel`` folder (``config.json`` + weights + tokenizer and
  image-processor files), e.g. one saved by ``save_pretrained``.
* :class:`GlideFID` -- Frechet distance between Inception pool features
  (2048-d) of the generated images and those of a reference image folder or
  of precomputed statistics (``.npz`` with ``mu`` and ``sigma``, the
  pytorch-fid format). The Inception network is a local file: a torchvision
  ``inception_v3`` state_dict, the pytorch-fid ``pt_inception-2015-12-05``
  state_dict, or a TorchScript module.

``process`` takes ``data_samples``: dicts (or data elements) with ``prompt``
(str; CLIP score only) and ``image`` (uint8 (3, H, W) RGB tensor or array).
"""
import json
import os
import os.path as osp
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from scipy import linalg

from mmagic.registry import METRICS
from projects.glide.evaluation.samples import sample_field, to_hwc_uint8

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.tif',
                    '.tiff', '.ppm', '.pgm')

_CLIP_HINT = ('GlideCLIPScore needs local CLIP weights: pass '
              'clip_path=/path/to/clip (a transformers CLIPModel folder); '
              'nothing is downloaded')
_INCEPTION_HINT = (
    'GlideFID needs a local Inception network: pass '
    'inception_path=/path/to/file (a torchvision inception_v3 state_dict, the '
    'pytorch-fid pt_inception-2015-12-05 weights or a TorchScript module); '
    'nothing is downloaded')
_REFERENCE_HINT = (
    'GlideFID needs reference images: pass reference_dir=/path/to/images (a '
    'folder of images) or reference_stats=/path/to/stats.npz (with mu and '
    'sigma)')


def _images_of(data_samples: Sequence, metric: str) -> List[np.ndarray]:
    images = []
    for sample in data_samples:
        img = sample_field(sample, 'image')
        if img is None:
            raise KeyError(f'{metric}: data sample without an "image" field')
        images.append(to_hwc_uint8(img))
    return images


# --------------------------------------------------------------------------
# CLIP score
# --------------------------------------------------------------------------
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
    from transformers import (AutoTokenizer, CLIPImageProcessor, CLIPModel,
                              CLIPTokenizer)
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
class GlideCLIPScore(BaseMetric):
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
        super().__init__(collect_device=collect_device, prefix=prefix)
        if batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size}')
        self.clip_path = _check_clip_dir(clip_path)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
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
        images = _images_of(data_samples, 'GlideCLIPScore')
        for s in self.scores(images, prompts):
            self.results.append(dict(score=float(s)))

    def compute_metrics(self, results: list) -> Dict[str, float]:
        if not results:
            print_log('GlideCLIPScore: no images were scored', 'current',
                      level=30)
            return dict(score=float('nan'), count=0)
        values = np.array([r['score'] for r in results], np.float64)
        return dict(score=float(values.mean()), count=len(values))


# --------------------------------------------------------------------------
# Inception feature extractor
# --------------------------------------------------------------------------
def _fid_inception_blocks():
    """pytorch-fid's TF-compatible Inception blocks (avg pools that ignore
    padding, and a max pool in the last block)."""
    from torchvision.models.inception import InceptionA, InceptionC, InceptionE

    def avg(x):
        return F.avg_pool2d(
            x, kernel_size=3, stride=1, padding=1, count_include_pad=False)

    class FIDInceptionA(InceptionA):

        def forward(self, x):
            b1 = self.branch1x1(x)
            b5 = self.branch5x5_2(self.branch5x5_1(x))
            b3 = self.branch3x3dbl_3(
                self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            bp = self.branch_pool(avg(x))
            return torch.cat([b1, b5, b3, bp], 1)

    class FIDInceptionC(InceptionC):

        def forward(self, x):
            b1 = self.branch1x1(x)
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            bd = self.branch7x7dbl_1(x)
            for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3,
                          self.branch7x7dbl_4, self.branch7x7dbl_5):
                bd = layer(bd)
            bp = self.branch_pool(avg(x))
            return torch.cat([b1, b7, bd, bp], 1)

    class FIDInceptionE(InceptionE):
        use_max_pool = False

        def forward(self, x):
            b1 = self.branch1x1(x)
            b3 = self.branch3x3_1(x)
            b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            bd = torch.cat([self.branch3x3dbl_3a(bd),
                            self.branch3x3dbl_3b(bd)], 1)
            pooled = F.max_pool2d(x, 3, 1, 1) if self.use_max_pool else avg(x)
            bp = self.branch_pool(pooled)
            return torch.cat([b1, b3, bd, bp], 1)

    class FIDInceptionE2(FIDInceptionE):
        use_max_pool = True

    return FIDInceptionA, FIDInceptionC, FIDInceptionE, FIDInceptionE2


def _build_pytorch_fid_inception() -> nn.Module:
    from torchvision.models import inception_v3
    A, C, E1, E2 = _fid_inception_blocks()
    net = inception_v3(
        weights=None, aux_logits=False, init_weights=False, num_classes=1008)
    net.Mixed_5b = A(192, pool_features=32)
    net.Mixed_5c = A(256, pool_features=64)
    net.Mixed_5d = A(288, pool_features=64)
    net.Mixed_6b = C(768, channels_7x7=128)
    net.Mixed_6c = C(768, channels_7x7=160)
    net.Mixed_6d = C(768, channels_7x7=160)
    net.Mixed_6e = C(768, channels_7x7=192)
    net.Mixed_7b = E1(1280)
    net.Mixed_7c = E2(2048)
    return net


class InceptionFeatures(nn.Module):
    """Pool features of a local Inception file; ``forward`` takes uint8-range
    (N, 3, H, W) RGB float tensors and returns (N, D) float64 features.

    * torchvision ``inception_v3`` state_dict (ImageNet normalisation) or the
      pytorch-fid ``pt_inception`` state_dict (1008 classes, no AuxLogits;
      inputs scaled to [-1, 1]): images are resized to 299 x 299 (bilinear)
      and the 2048-d average-pooled features before ``fc`` are returned;
    * TorchScript: if ``forward`` takes ``return_features`` (the StyleGAN /
      clean-fid ``inception-2015-12-05.pt``), it gets the raw [0, 255] images
      and ``return_features=True``; otherwise it gets 299 x 299 images in
      [-1, 1] and must return (N, D) or (N, D, 1, 1) features.
    """

    def __init__(self, inception_path, device='cpu') -> None:
        super().__init__()
        if inception_path is None:
            raise ValueError(f'inception_path is None. {_INCEPTION_HINT}.')
        path = osp.expanduser(str(inception_path))
        if not osp.isfile(path):
            what = 'a folder' if osp.isdir(path) else 'missing'
            raise FileNotFoundError(
                f'inception_path {path!r} is {what}. {_INCEPTION_HINT}.')
        self.path = path
        self.kind, self.net = self._load(path)
        self.net.eval().to(device)  # forward() runs under no_grad
        self.device = torch.device(device)

    @staticmethod
    def _load(path: str) -> Tuple[str, nn.Module]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', FutureWarning)
                return _script_kind(torch.jit.load(path, map_location='cpu'))
        except Exception:  # noqa: BLE001 -- not TorchScript; try a state_dict
            pass
        try:
            state = torch.load(path, map_location='cpu', weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise ValueError(
                f'{path!r} is neither TorchScript nor a torch.save()d '
                f'state_dict ({type(e).__name__}: {e}). {_INCEPTION_HINT}.'
            ) from e
        if isinstance(state, dict):
            for key in ('state_dict', 'model'):
                if isinstance(state.get(key), dict):
                    state = state[key]
                    break
        if not isinstance(state, dict) or not all(
                isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f'{path!r} does not hold a state_dict of '
                             f'tensors. {_INCEPTION_HINT}.')
        if state and all(k.startswith('module.') for k in state):
            state = {k[len('module.'):]: v for k, v in state.items()}
        fc = state.get('fc.weight')
        if fc is None or 'Mixed_7c.branch_pool.conv.weight' not in state:
            raise ValueError(f'{path!r} is not an Inception-v3 state_dict '
                             f'(no fc / Mixed_7c weights). {_INCEPTION_HINT}.')
        if fc.shape[0] == 1008 and not any(
                k.startswith('AuxLogits.') for k in state):
            kind, net = 'pytorch-fid', _build_pytorch_fid_inception()
        else:
            from torchvision.models import inception_v3
            aux = any(k.startswith('AuxLogits.') for k in state)
            kind = 'torchvision'
            net = inception_v3(
                weights=None,
                aux_logits=aux,
                init_weights=False,
                num_classes=fc.shape[0])
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(f'{path!r} does not match the {kind} Inception-v3 '
                             f'architecture: {e}. {_INCEPTION_HINT}.') from e
        net.fc = nn.Identity()  # forward() now returns the pool features
        return kind, net

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, torch.float32)
        if self.kind == 'script-features':
            feats = self.net(x, return_features=True)
        else:
            x = F.interpolate(
                x, size=(299, 299), mode='bilinear', align_corners=False)
            x = x / 255
            if self.kind == 'torchvision':
                mean = x.new_tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
                std = x.new_tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
                x = (x - mean) / std
            else:
                x = 2 * x - 1
            feats = self.net(x)
            if isinstance(feats, tuple):  # (logits, aux) in train mode
                feats = feats[0]
        return feats.reshape(feats.shape[0], -1).double().cpu()


def _script_kind(module) -> Tuple[str, nn.Module]:
    try:
        schema = str(module.forward.schema)
    except Exception:  # noqa: BLE001
        schema = ''
    kind = 'script-features' if 'return_features' in schema else 'script'
    return kind, module


def load_image_folder(folder: str) -> List[np.ndarray]:
    """(H, W, 3) uint8 RGB images of a folder (not recursive, sorted)."""
    from PIL import Image
    images = []
    for name in _image_files(folder):
        with Image.open(osp.join(folder, name)) as im:
            images.append(np.asarray(im.convert('RGB')))
    return images


def _image_files(folder: str) -> List[str]:
    return sorted(n for n in os.listdir(folder)
                  if n.lower().endswith(IMAGE_EXTENSIONS)
                  and osp.isfile(osp.join(folder, n)))


# --------------------------------------------------------------------------
# Frechet distance
# --------------------------------------------------------------------------
def feature_statistics(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of (N, D) features, as pytorch-fid."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError('FID needs at least 2 feature vectors, got shape '
                         f'{features.shape}')
    return features.mean(0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Frechet distance of two Gaussians, exactly as pytorch-fid computes it
    (``scipy.linalg.sqrtm`` of sigma1 @ sigma2; ``eps`` added to the
    diagonals if the root is not finite; imaginary round-off dropped)."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f'statistics of different dimensions: mu '
                         f'{mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} '
                         f'vs {sigma2.shape}')
    diff = mu1 - mu2
    tr_covmean = _trace_sqrt_product(sigma1, sigma2, eps)
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) -
                 2 * tr_covmean)


def _trace_sqrt_product(sigma1, sigma2, eps: float) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # scipy warns on singular matrices
        covmean = linalg.sqrtm(sigma1.dot(sigma2))
        if not np.isfinite(covmean).all():
            print_log(
                'fid calculation produces singular product; adding '
                f'{eps} to diagonal of cov estimates', 'current', level=30)
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            m = np.max(np.abs(covmean.imag))
            raise ValueError(f'FID: imaginary component {m} in the matrix '
                             'square root (ill-conditioned covariances)')
        covmean = covmean.real
    return float(np.trace(covmean))


def frechet_distance_low_rank(features1: np.ndarray, mu2: np.ndarray,
                              sigma2: np.ndarray) -> float:
    """Same value as ``frechet_distance(*feature_statistics(features1), mu2,
    sigma2)`` when there are fewer feature vectors N than dimensions D.

    sigma1 = Q A Q^T with Q (D, r) orthonormal (r <= N - 1), so the non-zero
    eigenvalues of sigma1 @ sigma2 are those of A @ (Q^T sigma2 Q) and the
    trace of its square root is computed with ``scipy.linalg.sqrtm`` on an
    r x r matrix instead of a D x D one (exact, and far faster).
    """
    x = np.asarray(features1, np.float64)
    n = len(x)
    mu1 = x.mean(0)
    _, s, vt = np.linalg.svd(x - mu1, full_matrices=False)
    keep = s > s.max(initial=0.0) * max(x.shape) * np.finfo(np.float64).eps
    q, a = vt[keep].T, s[keep]**2 / (n - 1)
    tr_covmean = _trace_sqrt_product(np.diag(a), q.T @ sigma2 @ q, 1e-6) \
        if a.size else 0.0
    diff = mu1 - mu2
    return float(diff.dot(diff) + a.sum() + np.trace(sigma2) -
                 2 * tr_covmean)


@METRICS.register_module()
class GlideFID(BaseMetric):
    """Frechet Inception Distance of the generated images to a reference set.

    Args:
        inception_path (str): local Inception file (see
            :class:`InceptionFeatures`). Required; nothing is downloaded.
        reference_dir (str, optional): folder of reference images.
        reference_stats (str, optional): ``.npz`` with ``mu`` and ``sigma``
            of the reference features (pytorch-fid format; an optional
            ``count`` is reported as ``reference_count``). Exactly one of
            ``reference_dir`` / ``reference_stats`` is required.
        batch_size (int): Inception forward batch size. Default 50.
        device (str | torch.device): where Inception runs. Default ``'cpu'``.
        collect_device, prefix: see :class:`mmengine.evaluator.BaseMetric`.

    ``compute_metrics`` returns ``fid``, ``count`` (generated images),
    ``reference_count`` (-1 if unknown), ``feature_dim`` and ``biased``
    (1 when either set has fewer images than ``feature_dim``: the covariance
    is then rank-deficient and FID is biased upwards; a warning is logged).
    Prefixed: ``fid/fid``, ``fid/count``, ...
    """
    default_prefix = 'fid'

    def __init__(self,
                 inception_path: Optional[str] = None,
                 reference_dir: Optional[str] = None,
                 reference_stats: Optional[str] = None,
                 batch_size: int = 50,
                 device='cpu',
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        if batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size}')
        self.batch_size = int(batch_size)
        # check the cheap things first, then load the network
        if reference_dir is None and reference_stats is None:
            raise ValueError(f'no reference set. {_REFERENCE_HINT}.')
        if reference_dir is not None and reference_stats is not None:
            raise ValueError('pass only one of reference_dir and '
                             f'reference_stats. {_REFERENCE_HINT}.')
        self.reference_dir = self.reference_stats = None
        self._reference = None  # (mu, sigma, features or None, count)
        if reference_dir is not None:
            folder = osp.expanduser(str(reference_dir))
            if not osp.isdir(folder):
                raise FileNotFoundError(f'reference_dir {folder!r} is not a '
                                        f'folder. {_REFERENCE_HINT}.')
            if len(_image_files(folder)) < 2:
                raise ValueError(
                    f'reference_dir {folder!r} holds fewer than 2 images '
                    f'({", ".join(IMAGE_EXTENSIONS)}). {_REFERENCE_HINT}.')
            self.reference_dir = folder
        else:
            self.reference_stats = osp.expanduser(str(reference_stats))
            self._reference = self._load_stats(self.reference_stats)
        self.inception = InceptionFeatures(inception_path, device)

    @staticmethod
    def _load_stats(path: str):
        if not osp.isfile(path):
            raise FileNotFoundError(f'reference_stats {path!r} does not '
                                    f'exist. {_REFERENCE_HINT}.')
        try:
            with np.load(path) as data:
                mu = np.asarray(data['mu'], np.float64)
                sigma = np.asarray(data['sigma'], np.float64)
                count = int(data['count']) if 'count' in data else -1
        except Exception as e:  # noqa: BLE001
            raise ValueError(
                f'reference_stats {path!r} is not an .npz with mu and sigma '
                f'({type(e).__name__}: {e}). {_REFERENCE_HINT}.') from e
        if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
            raise ValueError(f'reference_stats {path!r}: mu {mu.shape} and '
                             f'sigma {sigma.shape} do not match')
        return mu, sigma, None, count

    def features(self, images: Sequence) -> np.ndarray:
        """(N, D) float64 Inception features of uint8 RGB images."""
        images = [to_hwc_uint8(img) for img in images]
        out = []
        for i in range(0, len(images), self.batch_size):
            chunk = images[i:i + self.batch_size]
            if len({im.shape for im in chunk}) == 1:
                batch = torch.from_numpy(np.stack(chunk)).permute(0, 3, 1, 2)
                out.append(self.inception(batch.float()).numpy())
            else:  # mixed sizes: one at a time
                out.extend(
                    self.inception(
                        torch.from_numpy(im).permute(2, 0, 1)[None].float()
                    ).numpy() for im in chunk)
        return np.concatenate(out) if out else np.zeros((0, 0))

    def reference_statistics(self):
        """(mu, sigma, features or None, count) of the reference set
        (computed once, on first use)."""
        if self._reference is None:
            feats = self.features(load_image_folder(self.reference_dir))
            mu, sigma = feature_statistics(feats)
            self._reference = (mu, sigma, feats, len(feats))
        return self._reference

    def save_reference_stats(self, path: str) -> None:
        """Write the reference statistics as a pytorch-fid style .npz."""
        mu, sigma, _, count = self.reference_statistics()
        np.savez(path, mu=mu, sigma=sigma, count=count)

    def process(self, data_batch, data_samples: Sequence) -> None:
        images = _images_of(data_samples, 'GlideFID')
        if images:
            for f in self.features(images):
                self.results.append(dict(feature=f.astype(np.float64)))

    def compute_metrics(self, results: list) -> Dict[str, float]:
        mu2, sigma2, ref_feats, ref_count = self.reference_statistics()
        dim = mu2.size
        count = len(results)
        metrics = dict(
            fid=float('nan'),
            count=count,
            reference_count=ref_count,
            feature_dim=dim,
            biased=0)
        if count < 2:
            print_log(f'GlideFID: needs at least 2 generated images, got '
                      f'{count}', 'current', level=30)
            return metrics
        feats = np.stack([r['feature'] for r in results])
        if feats.shape[1] != dim:
            raise ValueError(f'GlideFID: generated features have '
                             f'{feats.shape[1]} dimensions, the reference '
                             f'statistics {dim}')
        small = [c for c in (count, ref_count) if 0 <= c < dim]
        if small:
            metrics['biased'] = 1
            print_log(
                f'GlideFID: {count} generated / {ref_count} reference images '
                f'for {dim}-d features: with fewer images than feature '
                'dimensions the covariance is rank-deficient and FID is '
                'biased (use thousands of images for comparable numbers)',
                'current', level=30)
        if count < dim:
            fid = frechet_distance_low_rank(feats, mu2, sigma2)
        elif ref_feats is not None and len(ref_feats) < dim:
            fid = frechet_distance_low_rank(ref_feats, *feature_statistics(
                feats))
        else:
            fid = frechet_distance(*feature_statistics(feats), mu2, sigma2)
        metrics['fid'] = fid
        return metrics
