"""Does a shapes model tie each kind of shape to its colour? Linear probes on
its text encoder, and where its shapes' pixels look in the caption.

    python tools/text_binding_probe.py CONFIG CHECKPOINT [--seed 0] [--scenes 48]

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
colour and 33.3% for a kind. Both tables take about a minute on a CPU, against
~17 minutes for a 256-caption ``tools/test.py`` run, so they are a cheap
first check of a change (docs/default_model.md, "Why the class lags").

The second table is the UNet's side: for ``--scenes`` true two-shape renders
(different kinds, seen split) noised to timesteps 900 and 600, the attention
each text attention level pays from the pixels of shape 1 and of shape 2 to
the words c1, k1, c2, k2, the padding and the whole caption (% of a pixel's
attention, averaged over pixels, heads and the level's blocks). A model that
binds has shape 1's pixels on k1 more than on k2, and shape 2's the other
way round.
"""
import argparse
import itertools
import os.path as osp
import sys
from typing import Dict, List, Sequence, Tuple

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

#: The words of a two-shape caption that the tables read: the first shape's
#: colour and kind, then the second shape's.
WORDS: Tuple[str, ...] = ('c1', 'k1', 'c2', 'k2')

#: (name, word whose token state is read, attribute predicted), words of
#: :data:`WORDS`.
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
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='a shapes model config (e.g. glide_tiny_shapes-64x64.py)')
    parser.add_argument('checkpoint', help='its weights (published or a training checkpoint)')
    parser.add_argument('--seed', type=int, default=0, help='relations, caption order, probe init, scenes')
    parser.add_argument('--scenes', type=int, default=48, help='two-shape scenes for the attention table')
    return parser.parse_args(argv)


def two_shape_caption(c1: str, k1: str, relation: str, c2: str, k2: str, background: str) -> str:
    """The canonical caption ``a C1 K1 REL a C2 K2 on a BG background``."""
    return f'a {c1} {k1} {relation} a {c2} {k2} on a {background} background'


def binding_captions(seed: int = 0) -> List[Dict[str, str]]:
    """Every two-shape caption with different colours and different kinds,
    in a seeded random order: dicts with the ``caption`` and its words
    ``c1, k1, c2, k2, bg``."""
    import numpy as np

    from projects.glide.datasets.shapes import COLORS, KINDS, RELATIONS
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
    """The token index of the last BPE token of each of ``c1, k1, c2, k2``
    in a :func:`two_shape_caption` (found by encoding its prefixes)."""
    words = caption.split(' ')
    targets = {'c1': 1, 'k1': 2}
    second = words.index('a', 3)  # the article of the second shape
    targets.update(c2=second + 1, k2=second + 2)
    return {name: len(tokenizer.encode(' '.join(words[:i + 1]))) - 1 for name, i in targets.items()}


def linear_probe_accuracy(features, labels: Sequence[int], num_classes: int,
                          train_fraction: float = 0.7, steps: int = 500, seed: int = 0) -> float:
    """Fit a softmax regression (Adam, small L2) on the first
    ``train_fraction`` of (``features`` (N, D), ``labels`` (N,)), features
    standardised with the training statistics; return the accuracy (%) on the
    rest."""
    import torch
    import torch.nn.functional as F
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
    import torch

    from projects.glide.datasets.shapes import COLORS, KINDS
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
    import numpy as np

    from projects.glide.datasets.shapes import shape_coverage
    covered = np.zeros((2, resolution, resolution))
    for plane, shape in zip(covered, scene.shapes):
        rows, cols, coverage = shape_coverage(shape, resolution)
        plane[rows, cols] = coverage
    covered = covered > 0.6
    return np.stack([covered[0] & ~covered[1], covered[1] & ~covered[0]])


def two_kind_scenes(count: int, seed: int = 0) -> Tuple[list, List[str]]:
    """``count`` seeded random scenes (seen split) with two shapes of
    different kinds, and their canonical captions."""
    import numpy as np

    from projects.glide.datasets.shapes import sample_scene
    rng = np.random.default_rng(seed)
    scenes = []
    while len(scenes) < count:
        scene = sample_scene(rng, 'seen', two_shape_prob=1.0)
        if scene.shapes[0].kind != scene.shapes[1].kind:
            scenes.append(scene)
    captions = [two_shape_caption(a.color, a.kind, sc.relation, b.color, b.kind, sc.background)
                for sc in scenes for a, b in [sc.shapes]]
    return scenes, captions


def text_attention_by_level(unet, x_t, t: int, tokens, mask) -> dict:
    """Run ``unet`` on ``x_t`` (B, 3, R, R) at timestep ``t``; return, per
    side of a text attention level, the attention of each pixel on each text
    position (B, T, H*W), averaged over heads and the level's blocks."""
    import torch

    from projects.glide.models.unet import TextAttentionBlock
    levels = {}

    def record(block, args, out):
        weights = block.attention_weights(*args)[..., :tokens.shape[1]].mean(1).transpose(1, 2)
        levels.setdefault(args[0].shape[-1], []).append(weights)

    hooks = [m.register_forward_hook(record) for m in unet.modules()
             if isinstance(m, TextAttentionBlock) and hasattr(m, 'encoder_kv')]
    try:
        with torch.no_grad():
            unet(x_t, torch.full((len(x_t), ), t), tokens, mask)
    finally:
        for hook in hooks:
            hook.remove()
    return {side: torch.stack(found).mean(0) for side, found in levels.items()}


def attention_on_words(model, scenes: int = 48, timesteps: Sequence[int] = (900, 600),
                       seed: int = 0) -> List[Tuple[int, int, int, Dict[str, float]]]:
    """Where the pixels of each shape look in the caption (see the module
    docstring); moves the UNet to the CPU in float32. Returns ``(timestep,
    level side, shape 1 or 2, {word: %})`` rows, finest level first, words
    ``c1, k1, c2, k2, padding, caption`` (all text positions)."""
    import numpy as np
    import torch

    from projects.glide.datasets.shapes import render_scene
    drawn, captions = two_kind_scenes(scenes, seed)
    positions = [word_positions(model.tokenizer, c) for c in captions]
    tokens, mask = model.tokenizer(captions, device='cpu')
    unet = model.unet.cpu().float().eval()
    x0 = torch.stack([torch.from_numpy(render_scene(sc, unet.image_size)).permute(2, 0, 1) for sc in drawn]) * 2 - 1
    alphas_cumprod = model.diffusion_scheduler.train_diffusion.alphas_cumprod
    generator = torch.Generator().manual_seed(seed)
    results = []
    for t in timesteps:
        a = float(alphas_cumprod[t])
        x_t = a ** 0.5 * x0 + (1 - a) ** 0.5 * torch.randn(x0.shape, generator=generator)
        for side, attention in sorted(text_attention_by_level(unet, x_t, t, tokens, mask).items(), reverse=True):
            pixels = np.stack([shape_pixels(sc, side) for sc in drawn]).reshape(len(drawn), 2, -1)
            for shape in (0, 1):
                shares = []
                for i, p in enumerate(positions):
                    if pixels[i, shape].any():
                        look = attention[i][:, torch.from_numpy(pixels[i, shape])].mean(1)  # (T, )
                        shares.append([look[p[w]].item() for w in WORDS]
                                      + [look[~mask[i]].sum().item(), look.sum().item()])
                mean = 100 * np.mean(shares, axis=0) if shares else np.zeros(6)
                results.append((t, side, shape + 1, dict(zip(WORDS + ('padding', 'caption'), mean.tolist()))))
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    for path in (args.config, args.checkpoint):
        if not osp.isfile(path):
            print(f'error: file not found: {path}', file=sys.stderr)
            return 1
    from mmengine.registry import init_default_scope

    import projects.glide  # noqa: F401  (registers the models)
    from mmagic.apis import init_model
    init_default_scope('mmagic')
    model = init_model(args.config, args.checkpoint, device='cpu')
    rows = binding_captions(args.seed)
    results = probe_text_binding(model, rows, args.seed)
    print(f'{len(rows)} captions "a C1 K1 REL a C2 K2 on a BG background", '
          'probes fit on 70%, test accuracy on 30%')
    print('| probe | accuracy % | chance % |\n|---|---|---|')
    for name, accuracy, chance in results:
        print(f'| {name} | {accuracy:.1f} | {chance:.1f} |')
    print(f'\nattention (% of a pixel\'s) from the pixels of each shape, {args.scenes} noised true renders')
    print('| timestep | level | pixels of | c1 | k1 | c2 | k2 | padding | caption |')
    print('|---|---|---|---|---|---|---|---|---|')
    for t, level, shape, share in attention_on_words(model, args.scenes, seed=args.seed):
        print(f'| {t} | {level}x{level} | shape {shape} | ' + ' | '.join(f'{v:.1f}' for v in share.values()) + ' |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
