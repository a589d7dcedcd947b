"""Captions of the shapes world: a generator and a parser of one small grammar.

Examples: ``a small yellow triangle on the left, white background`` or
``A blue triangle above a red circle on a white background.`` The parser
reads every caption the generator writes back into the scene's attributes.
"""
import re
from typing import List, Optional, Tuple

import numpy as np

from .scene import COLORS, KINDS, PALETTE, RELATIONS, Scene, Shape, pick, realize_scene

_SIZE_WORDS = {'small': ('small', 'little'), 'large': ('large', 'big')}
_POSITION_PHRASES = {
    'left': ('on the left', 'at the left', 'on the left side'),
    'right': ('on the right', 'at the right', 'on the right side'),
    'top': ('at the top', 'on the top', 'near the top'),
    'bottom': ('at the bottom', 'on the bottom', 'near the bottom'),
    'center': ('in the center', 'in the middle', 'in the centre'),
}
_RELATION_PHRASES = {
    'above': ('above', ),
    'below': ('below', 'under', 'beneath'),
    'to the left of': ('to the left of', 'left of'),
    'to the right of': ('to the right of', 'right of'),
}


def _with_article(phrase: str) -> str:
    return ('an ' if phrase[0] in 'aeiou' else 'a ') + phrase


def _shape_phrase(s: Shape, with_size: bool,
                  rng: Optional[np.random.Generator]) -> str:
    words = []
    if with_size and s.size is not None:
        words.append(pick(rng, _SIZE_WORDS[s.size])
                     if rng is not None else s.size)
    words += [s.color, s.kind]
    return _with_article(' '.join(words))


def caption(scene: Scene, rng: Optional[np.random.Generator] = None) -> str:
    """Describe a scene.

    With ``rng=None`` the caption is canonical: lower case, every known
    attribute, ``... on a <colour> background``. With an ``rng`` the wording,
    word order, case and trailing punctuation vary, and each size (50%) and
    the position (60%) may be omitted; the caption never states anything the
    scene does not satisfy.
    """
    if rng is None:
        parts = [_shape_phrase(s, True, None) for s in scene.shapes]
        text = parts[0]
        if scene.relation is not None:
            text = f'{text} {scene.relation} {parts[1]}'
        elif scene.shapes[0].position is not None:
            text += ' ' + _POSITION_PHRASES[scene.shapes[0].position][0]
        return f'{text} on {_with_article(scene.background)} background'

    parts = [
        _shape_phrase(s, rng.random() < 0.5, rng) for s in scene.shapes
    ]
    text = parts[0]
    background_first = rng.random() < 0.2
    if scene.relation is not None:
        relation = pick(rng, _RELATION_PHRASES[scene.relation])
        text = f'{text} {relation} {parts[1]}'
    elif scene.shapes[0].position is not None and rng.random() < 0.6:
        where = pick(rng, _POSITION_PHRASES[scene.shapes[0].position])
        position_first = not background_first and rng.random() < 0.2
        text = f'{where}, {text}' if position_first else f'{text} {where}'
    bg, a_bg = scene.background, _with_article(scene.background)
    form = rng.random()
    if background_first:
        text = f'{pick(rng, (bg, a_bg))} background with {text}'
    elif form < 0.2:
        text = f'{text}, {bg} background'
    else:
        preposition = pick(rng, ('on', 'on', 'against', 'with'))
        text = f'{text} {preposition} {a_bg} background'
    style = rng.random()
    if style < 0.3:
        text = text[0].upper() + text[1:]
    elif style < 0.4:
        text = text.title()
    return text + pick(rng, ('', '', '.', '!'))


_ARTICLES = frozenset({'a', 'an', 'one', 'the', 'single'})
_SIZE_ALIASES = {w: size for size, ws in _SIZE_WORDS.items() for w in ws}
_POSITION_ALIASES = {
    'left': 'left', 'right': 'right', 'top': 'top', 'bottom': 'bottom',
    'center': 'center', 'centre': 'center', 'middle': 'center'
}
_POSITION_FILLERS = frozenset({'on', 'at', 'in', 'near', 'the', 'to'})
_BACKGROUND_PREPOSITIONS = frozenset({'on', 'against', 'with', 'over'})
_RELATION_ALIASES = sorted(
    ((tuple(p.split()), rel) for rel, ps in _RELATION_PHRASES.items()
     for p in ps),
    key=lambda item: -len(item[0]))


def _find_relation(tokens: List[str]) -> List[Tuple[int, int, str]]:
    """All (start, end, relation) matches, longest phrases first, no
    overlapping matches."""
    found, used = [], set()
    for phrase, rel in _RELATION_ALIASES:
        n = len(phrase)
        for i in range(len(tokens) - n + 1):
            span = set(range(i, i + n))
            if tuple(tokens[i:i + n]) == phrase and not span & used:
                found.append((i, i + n, rel))
                used |= span
    return sorted(found)


def _parse_shape(tokens: List[str], text: str) -> Shape:
    phrase = ' '.join(tokens)
    if tokens and tokens[0] in _ARTICLES:
        tokens = tokens[1:]
    if not tokens:
        raise ValueError(f'missing shape in caption {text!r}')
    if tokens[-1] not in KINDS:
        raise ValueError(f'unknown shape {tokens[-1]!r} in caption {text!r}; '
                         f'expected one of {", ".join(KINDS)}')
    color = size = None
    for w in tokens[:-1]:
        if w in PALETTE and color is None:
            color = w
        elif w in _SIZE_ALIASES and size is None:
            size = _SIZE_ALIASES[w]
        elif w in PALETTE or w in _SIZE_ALIASES:
            raise ValueError(f'repeated attribute {w!r} in shape phrase '
                             f'{phrase!r} of caption {text!r}')
        else:
            raise ValueError(f'unknown colour or size {w!r} in '
                             f'shape phrase {phrase!r} of caption {text!r}')
    if color is None:
        raise ValueError(f'no colour for the {tokens[-1]} in caption '
                         f'{text!r}; expected one of {", ".join(COLORS)}')
    return Shape(tokens[-1], color, size)


def _split_background(tokens: List[str], text: str) -> Tuple[str, List[str]]:
    hits = [i for i, w in enumerate(tokens) if w == 'background']
    if not hits:
        raise ValueError(f'no background in caption {text!r}; expected e.g. '
                         "'... on a blue background'")
    if len(hits) > 1:
        raise ValueError(f'more than one background in caption {text!r}')
    i = hits[0]
    if i == 0 or tokens[i - 1] not in PALETTE:
        word = tokens[i - 1] if i else ''
        raise ValueError(f'unknown background colour {word!r} in caption '
                         f'{text!r}; expected one of {", ".join(COLORS)}')
    start = i - 1
    if start > 0 and tokens[start - 1] in _ARTICLES:
        start -= 1
    if start > 0 and tokens[start - 1] in _BACKGROUND_PREPOSITIONS:
        start -= 1
    after = tokens[i + 1:]
    if after and after[0] in ('with', 'and'):
        after = after[1:]
    return tokens[i - 1], tokens[:start] + after


def _split_position(tokens: List[str],
                    text: str) -> Tuple[Optional[str], List[str]]:
    hits = [i for i, w in enumerate(tokens) if w in _POSITION_ALIASES]
    if not hits:
        return None, tokens
    if len(hits) > 1:
        raise ValueError(f'more than one position in caption {text!r}')
    i = hits[0]
    start, end = i, i + 1
    while start > 0 and tokens[start - 1] in _POSITION_FILLERS:
        start -= 1
    if end < len(tokens) and tokens[end] == 'side':
        end += 1
    return _POSITION_ALIASES[tokens[i]], tokens[:start] + tokens[end:]


def parse_caption(text: str) -> Scene:
    """Parse a caption of the grammar into a spec :class:`Scene` (geometry
    unset; ``size``/``position`` None where the caption is silent).

    Case, punctuation and extra spaces are ignored. Raises ValueError naming
    the problem for text outside the grammar (unknown colour/shape/word, no
    background, two shapes without a relation, ...).
    """
    tokens = re.sub(r'[^a-z]+', ' ', str(text).lower()).split()
    if not tokens:
        raise ValueError(f'empty caption {text!r}')
    background, rest = _split_background(tokens, text)
    relations = _find_relation(rest)
    if len(relations) > 1:
        raise ValueError(f'more than one relation in caption {text!r}')
    if relations:
        start, end, relation = relations[0]
        if any(w in _POSITION_ALIASES for w in rest[:start] + rest[end:]):
            raise ValueError(f'a position cannot be combined with a relation '
                             f'in caption {text!r}')
        shapes = [
            _parse_shape(rest[:start], text),
            _parse_shape(rest[end:], text)
        ]
    else:
        if sum(w in KINDS for w in rest) > 1:
            raise ValueError('two shapes need a relation '
                             f'({", ".join(RELATIONS)}) in caption {text!r}')
        position, rest = _split_position(rest, text)
        shapes = [_parse_shape(rest, text)]
        shapes[0].position = position
        relation = None
    try:
        return Scene(background, shapes, relation)
    except ValueError as e:
        raise ValueError(f'{e} in caption {text!r}') from None


def scene_from_caption(text: str, rng: np.random.Generator) -> Scene:
    """A concrete random scene satisfying a caption."""
    return realize_scene(parse_caption(text), rng)
