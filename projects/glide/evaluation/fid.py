"""Frechet Inception Distance of generated images to a reference set.

The reference is a folder of images or precomputed statistics (``.npz`` with
``mu`` and ``sigma``, the pytorch-fid format); the features are the 2048-d
pool features of a local Inception network (:class:`InceptionFeatures`).
``process`` takes dicts (or data elements) with ``image`` (uint8 (3, H, W)
RGB).
"""
import os
import os.path as osp
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmagic.registry import METRICS
from mmengine.logging import print_log
from scipy import linalg

from projects.glide.images import to_hwc_uint8

from .inception import InceptionFeatures
from .samples import NetworkMetric, sample_images

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.tif',
                    '.tiff', '.ppm', '.pgm')

_REFERENCE_HINT = (
    'GlideFID needs reference images: pass reference_dir=/path/to/images (a '
    'folder of images) or reference_stats=/path/to/stats.npz (with mu and '
    'sigma)')



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
class GlideFID(NetworkMetric):
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
        super().__init__(batch_size, device, collect_device, prefix)
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
        self.inception = InceptionFeatures(inception_path, self.device)

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
        images = sample_images(data_samples, 'GlideFID')
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
