"""Does a shapes model tie each kind of shape to its colour? Linear probes on
its text encoder, where its shapes' pixels look, and which text feature
draws a shape's kind (the tables of
``projects/glide/research/tools/text_binding_probe.py``).

The probe reads and changes the model only through its public seams: the
UNet's attention processors (:mod:`projects.glide.research.attention`),
``Glide.encode_prompt`` / ``infer(text_emb=...)`` for edited text states,
and ``infer(image=..., strength=...)`` to start from a noised image.

A caption with two shapes of different kinds, ``a C1 K1 REL a C2 K2 on a BG
background``, draws the right picture only if the model can tell which kind
goes with which colour. The UNet reads the caption through the text
transformer's token states (``xf_out``), so a kind token whose state does not
say its colour leaves a pixel that knows it is red no way to find "its" kind
by attention. This tool encodes every such caption (8 backgrounds x 42
ordered colour pairs x 6 ordered kind pairs = 2,016, relation drawn at
random), fits a linear softmax probe from one word's token state (its last
BPE token) to an attribute, on 70% of the captions, and prints the accuracy
on the other 30%. A probe that reads a word's own attribute (first colour ->
its colour) checks the method: it should be near 100%. Chance is 12.5% for a
colour and 33.3% for a kind. The last two probes read the first padding
position, which takes in the whole caption: a kind there is a kind that any
pixel can read, whichever shape it belongs to. The three tables take about
a minute and a half on a CPU, against ~17 minutes for a 256-caption
``tools/test.py`` run, so they are a cheap first check of a change
(docs/research/binding-history.md).

The second table is the UNet's side: for ``--scenes`` true two-shape renders
(different kinds, seen split) noised to timesteps 900 and 600, the attention
each text attention level pays from the pixels of shape 1 and of shape 2 to
the words c1, k1, c2, k2, the padding and the whole caption, and to the
pixels of its own shape and of the other shape (% of a pixel's attention,
averaged over pixels, heads and the level's blocks; the rest goes to the
background's pixels). A model that binds has shape 1's pixels on k1 more
than on k2, and shape 2's the other way round; a shape whose pixels look
at the other shape's pixels can take on its kind.

The third table asks which of the two text features the UNet gets draws the
kind of a shape: the per-token states (``xf_out``, read by attention) or the
pooled feature (``xf_proj``, added to the timestep embedding). For
``--swaps`` one-shape captions (seen split) it samples twice (guidance 3,
25 steps of the config's sampler), each time with one of the two features
taken from the caption with the kind changed (circle -> square -> triangle
-> circle), and counts which kind the judge finds. Skip it with
``--swaps 0``; it takes about half a minute.

The fourth table (``--routed N``, off by default) asks whether reading the
right kind word is enough for a shape to get its kind. For N captions with
two shapes of different kinds (seen split) it samples twice (guidance 3, 25
steps): as the model is, and with the kind words' attention routed by the
colour words', in every text attention block, on the conditional rows: at
each pixel, shape i's kind word gets 2 x the pixel's share of its attention
to the two colour words that goes to shape i's colour word (so a pixel that
reads c1 five times as much as c2, as the shapes' pixels do at 16x16, reads
k1 1.67x and k2 0.33x as much as before), and the pixel's weights are
renormalised. The judge counts both kinds right, swapped, one kind twice,
other. About 2N seconds on a CPU.

The fifth table (``--own-phrase N``, off by default) asks whether the UNet
can draw two kinds at all once the text reaches each shape apart. For N
captions with two shapes of different kinds (seen split) it starts the
sampling (guidance 3, the 25-step schedule from t = 800 on) from the
scene's kind-neutral render (each shape the mean of the three kinds'
coverages: layout and colours, no kind) noised to t = 800, twice: as
trained, and with the pixels inside each shape's box reading only the
token states of that shape's own one-shape caption (``a C K on a BG
background``, encoded apart) and the other pixels the caption's, in every
text attention block, on the conditional rows. The judge counts as for the
fourth table. About 8N seconds on a CPU.
"""
import contextlib
import itertools
import re
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from mmagic.registry import DATASETS
from mmengine.registry import init_default_scope

from projects.glide.datasets.shapes import COLORS, KINDS, RELATIONS, parse_caption, render_scene, sample_scene
from projects.glide.evaluation.shapes_accuracy import judge_image
from projects.glide.images import to_uint8

from .attention import (
    KindRoutingAttnProcessor,
    OwnPhraseAttnProcessor,
    recorded_text_attention,
    wrapped_attn_processors,
)
from .transforms import render_kind_neutral, render_shape_boxes, render_shape_masks, shape_word_positions

#: The words of a two-shape caption that the tables read: the first shape's
#: colour and kind, then the second shape's.
WORDS: Tuple[str, ...] = ('c1', 'k1', 'c2', 'k2')

#: (name, word whose token state is read, attribute predicted), words of
#: :data:`WORDS` or ``pad`` (the first padding position: its state is built
#: from the whole caption, and every pixel can read it).
PROBES: Tuple[Tuple[str, str, str], ...] = (
    ('first colour token -> its colour (method check)', 'c1', 'c1'),
    ('first kind token -> its colour', 'k1', 'c1'),
    ('first kind token -> the other colour', 'k1', 'c2'),
    ('second kind token -> its colour', 'k2', 'c2'),
    ('second kind token -> the other colour', 'k2', 'c1'),
    ('first colour token -> its kind', 'c1', 'k1'),
    ('first colour token -> the other kind', 'c1', 'k2'),
    ('second colour token -> its kind', 'c2', 'k2'),
    ('second colour token -> the other kind', 'c2', 'k1'),
    ('first padding token -> the first kind', 'pad', 'k1'),
    ('first padding token -> the second kind', 'pad', 'k2'),
)


def two_shape_caption(c1: str, k1: str, relation: str, c2: str, k2: str, background: str) -> str:
    """The canonical caption ``a C1 K1 REL a C2 K2 on a BG background``."""
    return f'a {c1} {k1} {relation} a {c2} {k2} on a {background} background'


def binding_captions(seed: int = 0) -> List[Dict[str, str]]:
    """Every two-shape caption with different colours and different kinds,
    in a seeded random order: dicts with the ``caption`` and its words
    ``c1, k1, c2, k2, bg``."""
    rng = np.random.default_rng(seed)
    rows = []
    for bg in COLORS:
        colours = [c for c in COLORS if c != bg]
        for (c1, c2), (k1, k2) in itertools.product(itertools.permutations(colours, 2),
                                                    itertools.permutations(KINDS, 2)):
            rel = RELATIONS[rng.integers(len(RELATIONS))]
            rows.append(dict(caption=two_shape_caption(c1, k1, rel, c2, k2, bg), c1=c1, k1=k1, c2=c2, k2=k2, bg=bg))
    return [rows[i] for i in rng.permutation(len(rows))]


def word_positions(tokenizer, caption: str) -> Dict[str, int]:
    """The token index of each of ``c1, k1, c2, k2`` in a two-shape caption
    (``shape_word_positions`` of the caption's parsed scene) and ``pad``, the
    first padding position after it."""
    (c1, k1), (c2, k2) = shape_word_positions(tokenizer, caption, parse_caption(caption)).tolist()
    return dict(c1=c1, k1=k1, c2=c2, k2=k2, pad=len(tokenizer.encode(caption)))


def linear_probe_accuracy(features, labels: Sequence[int], num_classes: int,
                          train_fraction: float = 0.7, steps: int = 500, seed: int = 0) -> float:
    """Fit a softmax regression (Adam, small L2) on the first
    ``train_fraction`` of (``features`` (N, D), ``labels`` (N,)), features
    standardised with the training statistics; return the accuracy (%) on the
    rest."""
    x = features.float()
    y = torch.as_tensor(labels)
    n_train = int(train_fraction * len(y))
    if not 0 < n_train < len(y):
        raise ValueError(f'train_fraction {train_fraction} leaves no training or no test rows of {len(y)}')
    x = (x - x[:n_train].mean(0)) / (x[:n_train].std(0) + 1e-6)
    gen = torch.Generator().manual_seed(seed)
    weight = (0.01 * torch.randn(x.shape[1], num_classes, generator=gen)).requires_grad_()
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        logits = x[:n_train] @ weight + bias
        (F.cross_entropy(logits, y[:n_train]) + 1e-3 * weight.pow(2).sum()).backward()
        optimizer.step()
    with torch.no_grad():
        predicted = (x[n_train:] @ weight + bias).argmax(1)
    return (predicted == y[n_train:]).float().mean().item() * 100


def probe_text_binding(model, rows: List[Dict[str, str]], seed: int = 0) -> List[Tuple[str, float, float]]:
    """Run :data:`PROBES` on ``model`` (a shapes :class:`Glide`) over
    ``rows`` of :func:`binding_captions`; return ``(name, test accuracy %,
    chance %)`` per probe."""
    tokens, mask = model.tokenizer([r['caption'] for r in rows], device='cpu')
    unet = model.unet.cpu().eval()
    with torch.no_grad():
        states = unet.encode_text(tokens, mask)['xf_out'].float().transpose(1, 2)  # (N, T, C)
    positions = [word_positions(model.tokenizer, r['caption']) for r in rows]
    results = []
    for name, word, attribute in PROBES:
        classes = COLORS if attribute.startswith('c') else KINDS
        features = torch.stack([states[i, p[word]] for i, p in enumerate(positions)])
        labels = [classes.index(r[attribute]) for r in rows]
        results.append((name, linear_probe_accuracy(features, labels, len(classes), seed=seed),
                        100 / len(classes)))
    return results


def shape_pixels(scene, resolution: int):
    """(2, R, R) bool: the pixels of an R x R grid that each of the scene's
    two shapes covers by more than 60% and the other does not."""
    covered = render_shape_masks(scene, resolution) > 0.6
    return np.stack([covered[0] & ~covered[1], covered[1] & ~covered[0]])


def two_kind_scenes(count: int, seed: int = 0) -> Tuple[list, List[str]]:
    """``count`` seeded random scenes (seen split) with two shapes of
    different kinds, and their canonical captions."""
    rng = np.random.default_rng(seed)
    scenes = []
    while len(scenes) < count:
        scene = sample_scene(rng, 'seen', two_shape_prob=1.0)
        if scene.shapes[0].kind != scene.shapes[1].kind:
            scenes.append(scene)
    captions = [two_shape_caption(a.color, a.kind, sc.relation, b.color, b.kind, sc.background)
                for sc in scenes for a, b in [sc.shapes]]
    return scenes, captions


def attention_by_level(unet, x_t, t: int, tokens, mask) -> dict:
    """Run ``unet`` on ``x_t`` (B, 3, R, R) at timestep ``t``; return, per
    side of a text attention level, the attention of each pixel on each key
    (B, T + H*W, H*W): text positions first, then the level's pixels;
    averaged over heads and the level's blocks."""
    with torch.no_grad(), recorded_text_attention(unet) as records:
        unet(x_t, torch.full((len(x_t), ), t), tokens, mask)
    by_side = {}
    for side, weights in records:
        by_side.setdefault(side, []).append(weights.mean(1).transpose(1, 2))
    return {side: torch.stack(levels).mean(0) for side, levels in by_side.items()}


#: The columns of :func:`attention_on_words`: the words of :data:`WORDS`, all
#: padding positions, the whole caption, then the pixels of the looking
#: shape and of the other shape.
ATTENTION_COLUMNS: Tuple[str, ...] = WORDS + ('padding', 'caption', 'own shape', 'other shape')


def attention_on_words(model, scenes: int = 48, timesteps: Sequence[int] = (900, 600),
                       seed: int = 0) -> List[Tuple[int, int, int, Dict[str, float]]]:
    """Where the pixels of each shape look (see the module docstring); moves
    the UNet to the CPU in float32. Returns ``(timestep, level side, shape 1
    or 2, {column: %})`` rows, finest level first, columns
    :data:`ATTENTION_COLUMNS`."""
    drawn, captions = two_kind_scenes(scenes, seed)
    positions = [word_positions(model.tokenizer, c) for c in captions]
    tokens, mask = model.tokenizer(captions, device='cpu')
    text = tokens.shape[1]
    unet = model.unet.cpu().float().eval()
    x0 = torch.stack([torch.from_numpy(render_scene(sc, unet.image_size)).permute(2, 0, 1) for sc in drawn]) * 2 - 1
    scheduler = model.diffusion_scheduler
    generator = torch.Generator().manual_seed(seed)
    results = []
    for t in timesteps:
        x_t = scheduler.add_noise(x0, torch.randn(x0.shape, generator=generator), t)
        for side, attention in sorted(attention_by_level(unet, x_t, t, tokens, mask).items(), reverse=True):
            pixels = torch.from_numpy(np.stack([shape_pixels(sc, side) for sc in drawn]).reshape(len(drawn), 2, -1))
            for shape in (0, 1):
                shares = []
                for i, p in enumerate(positions):
                    if pixels[i, shape].any():
                        look = attention[i][:, pixels[i, shape]].mean(1)  # (T + H*W, )
                        on_text, on_pixels = look[:text], look[text:]
                        shares.append([on_text[p[w]].item() for w in WORDS]
                                      + [on_text[~mask[i]].sum().item(), on_text.sum().item(),
                                         on_pixels[pixels[i, shape]].sum().item(),
                                         on_pixels[pixels[i, 1 - shape]].sum().item()])
                mean = 100 * np.mean(shares, axis=0) if shares else np.zeros(len(ATTENTION_COLUMNS))
                results.append((t, side, shape + 1, dict(zip(ATTENTION_COLUMNS, mean.tolist()))))
    return results


#: The feature swaps of :func:`kind_source` and the kinds it counts.
SWAPPED_FEATURES: Tuple[str, ...] = ('xf_proj', 'xf_out')
KIND_OUTCOMES: Tuple[str, ...] = ('caption kind', 'swapped kind', 'other or none')


def kind_source(model, count: int = 12, seed: int = 0) -> Dict[str, Dict[str, int]]:
    """Which text feature draws a shape's kind (see the module docstring).

    Returns ``{feature: {outcome: images}}`` for the features of
    :data:`SWAPPED_FEATURES` and the outcomes of :data:`KIND_OUTCOMES`.
    """
    init_default_scope('mmagic')
    dataset = DATASETS.build(dict(type='ShapesDataset', split='seen', size=count, seed=seed, two_shape_prob=0.,
                                  resolution=model.unet.image_size))
    scenes, captions = zip(*(dataset.get_scene(i) for i in range(count)))  # no renders needed
    swapped_kind = dict(zip(KINDS, KINDS[1:] + KINDS[:1]))
    # each kind word (one BPE token, with its leading space) changed in the caption
    kind_word = re.compile(r'(?<= )(' + '|'.join(KINDS) + r')(?![a-z])')
    changed = [kind_word.sub(lambda m: swapped_kind[m.group(1)], c) for c in captions]
    with torch.no_grad():
        text_emb, changed_emb = model.encode_prompt(list(captions)), model.encode_prompt(changed)
    counts = {}
    for feature in SWAPPED_FEATURES:
        samples = model.infer(text_emb=dict(text_emb, **{feature: changed_emb[feature]}), batch_size=count,
                              seed=seed, guidance_scale=3., num_inference_steps=25)['samples']
        images = to_uint8(samples)
        counts[feature] = dict.fromkeys(KIND_OUTCOMES, 0)
        for image, scene, caption in zip(images, scenes, captions):
            kind = scene.shapes[0].kind
            found = judge_image(image, caption)['matched'][0]
            found = found['kind'] if found else None
            outcome = {kind: 'caption kind', swapped_kind[kind]: 'swapped kind'}.get(found, 'other or none')
            counts[feature][outcome] += 1
    return counts


@contextlib.contextmanager
def kind_words_routed_by_colour(unet, positions: torch.Tensor) -> Iterator[None]:
    """In the block, every text attention block of ``unet`` routes each
    shape's kind word by the colour words (:class:`KindRoutingAttnProcessor`)
    on the first B rows of its batch (the conditional half under guidance);
    ``positions`` (B, 2, 2) int, each shape's colour and kind word positions."""
    with wrapped_attn_processors(unet, lambda inner: KindRoutingAttnProcessor(positions, inner)):
        yield


#: The samplings of :func:`kind_routing` and what it counts.
ROUTINGS: Tuple[str, ...] = ('as trained', 'kind words routed by colour')
TWO_KIND_OUTCOMES: Tuple[str, ...] = ('both right', 'swapped', 'one kind twice', 'other or none')


def kind_routing(model, count: int = 48, seed: int = 0) -> Dict[str, Dict[str, int]]:
    """The routed-attention table (see the module docstring): ``{routing:
    {outcome: images}}`` for :data:`ROUTINGS` and :data:`TWO_KIND_OUTCOMES`."""
    scenes, captions = two_kind_scenes(count, seed)
    positions = torch.tensor([[[p['c1'], p['k1']], [p['c2'], p['k2']]]
                              for p in (word_positions(model.tokenizer, c) for c in captions)])
    counts = {}
    for routing in ROUTINGS:
        with (kind_words_routed_by_colour(model.unet, positions) if routing != ROUTINGS[0]
              else contextlib.nullcontext()):
            samples = model.infer(prompt=list(captions), seed=seed, guidance_scale=3.,
                                  num_inference_steps=25)['samples']
        images = to_uint8(samples)
        counts[routing] = two_kind_outcomes(images, scenes, captions)
    return counts


def two_kind_outcomes(images, scenes, captions) -> Dict[str, int]:
    """How many of the uint8 ``images`` (B, 3, H, W) drawn for two-kind
    ``scenes``/``captions`` the judge finds in each of
    :data:`TWO_KIND_OUTCOMES`."""
    counts = dict.fromkeys(TWO_KIND_OUTCOMES, 0)
    for image, scene, caption in zip(images, scenes, captions):
        want = [s.kind for s in scene.shapes]
        got = [m['kind'] if m else None for m in judge_image(image, caption)['matched']]
        outcome = ('both right' if got == want else 'swapped' if got == want[::-1]
                   else 'one kind twice' if got[0] == got[1] and got[0] in want else 'other or none')
        counts[outcome] += 1
    return counts


def with_phrase_states(text_emb: Dict[str, torch.Tensor], phrase_states: torch.Tensor) -> Dict[str, torch.Tensor]:
    """``text_emb`` (``encode_prompt``'s, R rows) with each shape's one-shape
    caption's token states ``phrase_states`` (B, 2, width, T) appended to the
    caption's (T -> 3T text positions; the rows beyond B repeat their own
    states), for :func:`boxes_read_own_phrase`."""
    full = text_emb['xf_out']
    rows = len(phrase_states)
    phrases = [torch.cat([phrase_states[:, i], full[rows:]]) for i in (0, 1)]
    return dict(text_emb, xf_out=torch.cat([full] + phrases, dim=2))


@contextlib.contextmanager
def boxes_read_own_phrase(unet, boxes: Dict[int, torch.Tensor], text: int) -> Iterator[None]:
    """In the block, each shape's box (``boxes[side]``, (B, 2, side * side)
    bool) reads only its own phrase of the T = ``text`` wide states of
    :func:`with_phrase_states`, on the first B rows (:class:`OwnPhraseAttnProcessor`)."""
    with wrapped_attn_processors(unet, lambda inner: OwnPhraseAttnProcessor(boxes, text, inner)):
        yield


def start_strength(scheduler, start: int) -> float:
    """The img2img ``strength`` whose sampling starts at the largest kept
    timestep <= the original timestep ``start`` of ``scheduler``."""
    if not 0 < start <= scheduler.num_train_timesteps:
        raise ValueError(f'no sampling timestep at or below {start}')
    return start / scheduler.num_train_timesteps


#: The samplings of :func:`own_phrase_reading`.
PHRASE_READINGS: Tuple[str, ...] = ('as trained', 'each box reads its own phrase')


def one_shape_caption(colour: str, kind: str, background: str) -> str:
    """The canonical one-shape caption ``a C K on a BG background``."""
    return f'a {colour} {kind} on a {background} background'


def own_phrase_reading(model, count: int = 48, seed: int = 0, start: int = 800) -> Dict[str, Dict[str, int]]:
    """The own-phrase table (see the module docstring): ``{reading: {outcome:
    images}}`` for :data:`PHRASE_READINGS` and :data:`TWO_KIND_OUTCOMES`."""
    scenes, captions = two_kind_scenes(count, seed)
    unet, scheduler = model.unet, model.diffusion_scheduler
    phrases = [one_shape_caption(s.color, s.kind, sc.background) for sc in scenes for s in sc.shapes]
    with torch.no_grad():
        states = unet.encode_text(*model.tokenizer(phrases, device=model.device))['xf_out']
        text_emb = model.encode_prompt(list(captions))
    states = states.reshape(count, 2, *states.shape[1:])
    sides = [unet.image_size >> i for i in range(6) if unet.image_size >> i]
    boxes = {side: torch.from_numpy(np.stack([render_shape_boxes(sc, side) > 0.3 for sc in scenes])
                                    .reshape(count, 2, -1)) for side in sides}
    x0 = torch.stack([torch.from_numpy(render_kind_neutral(sc, unet.image_size)).permute(2, 0, 1)
                      for sc in scenes]) * 2 - 1
    # x0 noised to the first kept timestep <= start (img2img), with the noise drawn here
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    strength = start_strength(scheduler, start)
    counts = {}
    for reading in PHRASE_READINGS:
        as_trained = reading == PHRASE_READINGS[0]
        with (contextlib.nullcontext() if as_trained else boxes_read_own_phrase(unet, boxes, states.shape[-1])):
            samples = model.infer(init_image=noise, image=x0, strength=strength, batch_size=count,
                                  text_emb=text_emb if as_trained else with_phrase_states(text_emb, states),
                                  seed=seed, guidance_scale=3., num_inference_steps=25)['samples']
        counts[reading] = two_kind_outcomes(to_uint8(samples), scenes, captions)
    return counts
