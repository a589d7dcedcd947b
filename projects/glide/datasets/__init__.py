"""Datasets of the GLIDE project (they never import ``models/``)."""
from .image_caption_folder import ImageCaptionFolderDataset, parse_captions_file
from .prompt_set import PromptSetDataset, load_prompt_file
from .shapes import (
                     COLORS,
                     KINDS,
                     PALETTE,
                     POSITIONS,
                     RELATIONS,
                     SIZES,
                     Scene,
                     Shape,
                     ShapesDataset,
                     caption,
                     is_held_out,
                     make_prompt_set,
                     parse_caption,
                     realize_scene,
                     render_scene,
                     sample_scene,
                     scene_from_caption,
                     write_prompt_file,
)

__all__ = [
    'COLORS', 'KINDS', 'PALETTE', 'POSITIONS', 'RELATIONS', 'SIZES', 'Scene', 'Shape',
    'ShapesDataset', 'caption', 'is_held_out', 'make_prompt_set', 'parse_caption',
    'realize_scene', 'render_scene', 'sample_scene', 'scene_from_caption', 'write_prompt_file',
    'PromptSetDataset', 'load_prompt_file', 'ImageCaptionFolderDataset', 'parse_captions_file'
]
