"""``ShapesDataset``: seeded random shapes scenes, their captions and renders."""
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mmagic.registry import DATASETS, TRANSFORMS
from torch.utils.data import Dataset

from ...images import hwc_to_tensor
from .captions import caption
from .render import render_scene
from .scene import KINDS, PALETTE, POSITIONS, RELATIONS, SPLITS, Scene, check_split, sample_scene

_RESEARCH = "custom_imports=dict(imports=['projects.glide.research'])"
# arguments that became pipeline transforms -> the transform to use instead
_REMOVED_ARGS = {
    'kind_mask': f"pipeline=[dict(type='KindMask')] ({_RESEARCH})",
    'grounding': f"pipeline=[dict(type='ShapeGroundingTargets')] ({_RESEARCH})",
    'grounding_kind_region':
    "pipeline=[dict(type='ShapeGroundingTargets', kind_region=...)] "
    f'({_RESEARCH})',
}

Transform = Union[dict, Callable[[dict], dict]]


def _build_pipeline(pipeline: Optional[Sequence[Transform]]) -> List[Callable]:
    """Transforms from configs (``dict(type=...)``, built from mmagic's
    ``TRANSFORMS``) or callables ``item -> item``."""
    if pipeline is None:
        return []
    if not isinstance(pipeline, (list, tuple)):
        raise ValueError('pipeline must be a list of transforms (dicts with a type, or '
                         f'callables), got {type(pipeline).__name__}')
    transforms = []
    for i, t in enumerate(pipeline):
        if isinstance(t, dict):
            t = TRANSFORMS.build(t)
        elif not callable(t):
            raise ValueError(f'pipeline[{i}] must be a dict with a type or a callable, '
                             f'got {type(t).__name__}')
        transforms.append(t)
    return transforms


@DATASETS.register_module()
class ShapesDataset(Dataset):
    """Endless or finite dataset of random shapes scenes and captions.

    Item ``i`` depends only on ``seed``, ``split``, ``i`` and
    ``two_shape_prob`` (the scene; ``resolution`` only sets the render).

    Args:
        split: ``'train'`` or ``'seen'`` (scenes not held out, different
            streams) or ``'held_out'`` (only held-out scenes).
        size: number of items; None means endless (``len`` is 10**9).
        seed: base seed.
        resolution: side R of ``img``.
        low_res: if set, also return the same scene rendered at this side.
        two_shape_prob: probability of a two-shape (relation) scene.
        pipeline: transforms applied in order to each item before the crop,
            each ``item -> item``: configs ``dict(type=...)`` of mmagic's
            ``TRANSFORMS`` or callables (e.g. the research wing's
            ``KindMask``, which adds per-pixel targets).
        crop: if set (needs ``low_res``), return a random ``crop`` x
            ``crop`` window of ``img`` (and of every tensor the pipeline
            added whose last two dims are (R, R)) and the window of
            ``low_res`` that covers the same area (side ``crop * r / R``),
            aligned to the low-resolution pixel grid. Super-resolution UNets
            without attention are convolutional, so training them on crops
            teaches the same local task for a fraction of the compute
            (Imagen, Saharia et al. 2022). The window depends only on
            ``seed``, ``split``, ``i``.

    Items are dicts: ``img`` float32 (3, R, R) RGB in [-1, 1]; ``low_res``
    float32 (3, r, r) in [-1, 1] (only if ``low_res`` is set); ``prompt`` str;
    ``index`` int; ``held_out`` bool; ``scene`` the fixed-schema dict of
    :meth:`Scene.to_dict`; what the pipeline adds; with ``crop`` also
    ``crop_yx`` (top, left) of the window in ``img`` pixels.
    """
    ENDLESS_LENGTH = 10**9
    metainfo = dict(
        dataset_name='shapes', palette=PALETTE, kinds=KINDS,
        positions=POSITIONS, relations=RELATIONS)

    def __init__(self,
                 split: str = 'train',
                 size: Optional[int] = None,
                 seed: int = 0,
                 resolution: int = 64,
                 low_res: Optional[int] = None,
                 two_shape_prob: float = 0.4,
                 pipeline: Optional[Sequence[Transform]] = None,
                 crop: Optional[int] = None,
                 **removed):
        for name in removed:
            if name not in _REMOVED_ARGS:
                raise TypeError(f'ShapesDataset got an unexpected keyword argument {name!r}')
            raise ValueError(f'ShapesDataset no longer takes {name}=; use {_REMOVED_ARGS[name]}')
        check_split(split)
        if size is not None and size < 0:
            raise ValueError(f'size must be None or >= 0, got {size}')
        if crop is not None:
            if low_res is None or resolution % low_res:
                raise ValueError('crop needs low_res, and resolution must be a multiple of '
                                 f'low_res; got resolution={resolution}, low_res={low_res}')
            factor = resolution // low_res
            if not 0 < crop <= resolution or crop % factor:
                raise ValueError(f'crop must be a multiple of {factor} (resolution / low_res) '
                                 f'in [1, {resolution}], got {crop}')
        self.crop = crop
        self.split = split
        self.size = size
        self.seed = seed
        self.resolution = resolution
        self.low_res = low_res
        self.two_shape_prob = two_shape_prob
        self.pipeline = _build_pipeline(pipeline)

    def __len__(self) -> int:
        return self.ENDLESS_LENGTH if self.size is None else self.size

    def _check_index(self, index: int) -> int:
        index = int(index)
        if index < 0 and self.size is not None:
            index += self.size
        if not 0 <= index < len(self):
            raise IndexError(f'index {index} out of range for {len(self)}')
        return index

    def get_scene(self, index: int) -> Tuple[Scene, str]:
        """The concrete scene and caption of item ``index`` (no rendering)."""
        index = self._check_index(index)
        rng = np.random.default_rng([self.seed, SPLITS[self.split], index])
        scene = sample_scene(rng, self.split, self.two_shape_prob)
        return scene, caption(scene, rng)

    def __getitem__(self, index: int) -> dict:
        index = self._check_index(index)
        scene, prompt = self.get_scene(index)
        item = dict(
            img=hwc_to_tensor(render_scene(scene, self.resolution)),
            prompt=prompt,
            index=index,
            held_out=self.split == 'held_out',
            scene=scene.to_dict())
        if self.low_res is not None:
            item['low_res'] = hwc_to_tensor(render_scene(scene, self.low_res))
        for transform in self.pipeline:
            item = transform(item)
            if not isinstance(item, dict):
                raise TypeError(f'pipeline transform {transform!r} returned '
                                f'{type(item).__name__}, not the item dict')
        if self.crop is not None:
            self._crop(item, index)
        return item

    def _crop(self, item: dict, index: int) -> None:
        """Crop, in place, every (..., R, R) tensor of ``item`` and the same
        area of ``low_res``; record the window's corner in ``crop_yx``."""
        factor = self.resolution // self.low_res
        rng = np.random.default_rng([self.seed, SPLITS[self.split], index, 1])
        cells = (self.resolution - self.crop) // factor + 1
        top, left = (int(v) * factor for v in rng.integers(0, cells, size=2))
        side = (self.resolution, self.resolution)
        for key, value in item.items():
            if key != 'low_res' and isinstance(value, torch.Tensor) and value.shape[-2:] == side:
                item[key] = value[..., top:top + self.crop, left:left + self.crop].contiguous()
        lt, ll, lc = top // factor, left // factor, self.crop // factor
        item['low_res'] = item['low_res'][:, lt:lt + lc, ll:ll + lc].contiguous()
        item['crop_yx'] = (top, left)


def make_prompt_set(split: str,
                    n: int,
                    seed: int = 0,
                    two_shape_prob: float = 0.4) -> List[str]:
    """The captions of the first ``n`` items of ``ShapesDataset(split,
    seed=seed)``."""
    ds = ShapesDataset(split, size=n, seed=seed, two_shape_prob=two_shape_prob)
    return [ds.get_scene(i)[1] for i in range(n)]


def write_prompt_file(path: str, prompts: Sequence[str]) -> None:
    """Write captions to a UTF-8 text file, one per line."""
    with open(path, 'w', encoding='utf-8') as f:
        f.writelines(p.replace('\n', ' ') + '\n' for p in prompts)
