"""The procedurally drawn shapes world: a uniform background plus one or two
flat, anti-aliased shapes, with captions of a small grammar.

:mod:`.scene` (schema, held-out rules, layout sampling), :mod:`.render`
(rasteriser), :mod:`.captions` (generator and parser), :mod:`.dataset`
(``ShapesDataset``).
"""
from .captions import caption, parse_caption, scene_from_caption
from .dataset import ShapesDataset, make_prompt_set, write_prompt_file
from .negatives import (
                        NEGATIVE_TYPES,
                        HardNegativeCaptions,
                        collate_hard_negatives,
                        describes,
                        hard_negatives,
                        meaning,
                        negative_candidates,
)
from .render import SUPERSAMPLED_SIDE, check_concrete, render_scene, shape_coverage
from .scene import (
                        COLORS,
                        HELD_OUT_PAIRS,
                        KINDS,
                        MARGIN,
                        MAX_SHAPES,
                        MIN_GAP,
                        PALETTE,
                        POSITIONS,
                        RELATIONS,
                        SIZE_EXTENTS,
                        SIZES,
                        SPLITS,
                        Scene,
                        Shape,
                        is_held_out,
                        realize_scene,
                        sample_scene,
                        sample_spec,
)

__all__ = [
    'COLORS', 'HELD_OUT_PAIRS', 'KINDS', 'MARGIN', 'MAX_SHAPES', 'MIN_GAP', 'PALETTE',
    'POSITIONS', 'RELATIONS', 'SIZE_EXTENTS', 'SIZES', 'SPLITS', 'SUPERSAMPLED_SIDE', 'Scene',
    'Shape', 'ShapesDataset', 'caption', 'check_concrete', 'is_held_out', 'make_prompt_set',
    'parse_caption', 'realize_scene', 'render_scene', 'sample_scene', 'sample_spec',
    'scene_from_caption', 'shape_coverage', 'write_prompt_file', 'NEGATIVE_TYPES',
    'HardNegativeCaptions', 'collate_hard_negatives', 'describes', 'hard_negatives', 'meaning',
    'negative_candidates'
]
