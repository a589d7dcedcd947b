"""Evaluation of the GLIDE project."""
from .shapes_accuracy import (ATTRIBUTES, ShapesAccuracy, detect_shapes,
                              judge_image)

__all__ = ['ATTRIBUTES', 'ShapesAccuracy', 'detect_shapes', 'judge_image']
