"""Evaluation of the GLIDE project."""
from .shapes_accuracy import (ATTRIBUTES, ShapesAccuracy, detect_shapes,
                              judge_image)
from .reference_metrics import GlideCLIPScore, GlideFID, frechet_distance

__all__ = ['ATTRIBUTES', 'ShapesAccuracy', 'detect_shapes', 'judge_image',
           'GlideCLIPScore', 'GlideFID', 'frechet_distance']
