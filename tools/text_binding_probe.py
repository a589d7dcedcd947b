"""Linear probes on a shapes model's text encoder: does each shape's kind
token carry its own colour, and each colour token its own kind?

    python tools/text_binding_probe.py CONFIG CHECKPOINT [--seed 0]

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
colour and 33.3% for a kind. It takes about 20 s on a CPU, against
~17 minutes for a 256-caption ``tools/test.py`` run, so it is a cheap first
check of a text encoder change (docs/default_model.md, "Why the class
lags").
"""
import argparse
import itertools
import os.path as osp
import sys
from typing import Dict, List, Sequence, Tuple

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

#: (name, word whose token state is read, attribute predicted). Words: c1,
#: k1 (first shape's colour and kind), c2, k2 (second shape's).
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
    parser.add_argument('--seed', type=int, default=0, help='relations, caption order and probe init')
    return parser.parse_args(argv)


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
            rows.append(dict(caption=f'a {c1} {k1} {rel} a {c2} {k2} on a {bg} background',
                             c1=c1, k1=k1, c2=c2, k2=k2, bg=bg))
    return [rows[i] for i in rng.permutation(len(rows))]


def word_positions(tokenizer, row: Dict[str, str]) -> Dict[str, int]:
    """The token index of the last BPE token of each of ``c1, k1, c2, k2``
    in ``row['caption']`` (found by encoding the caption's prefixes)."""
    words = row['caption'].split(' ')
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


def probe_text_binding(model, seed: int = 0) -> List[Tuple[str, float, float]]:
    """Run :data:`PROBES` on ``model`` (a shapes :class:`Glide`); return
    ``(name, test accuracy %, chance %)`` per probe."""
    import torch

    from projects.glide.datasets.shapes import COLORS, KINDS
    rows = binding_captions(seed)
    tokens, mask = model.tokenizer([r['caption'] for r in rows], device='cpu')
    unet = model.unet.cpu().eval()
    with torch.no_grad():
        states = unet.encode_text(tokens, mask)['xf_out'].float().transpose(1, 2)  # (N, T, C)
    positions = [word_positions(model.tokenizer, r) for r in rows]
    results = []
    for name, word, attribute in PROBES:
        classes = COLORS if attribute.startswith('c') else KINDS
        features = torch.stack([states[i, p[word]] for i, p in enumerate(positions)])
        labels = [classes.index(r[attribute]) for r in rows]
        results.append((name, linear_probe_accuracy(features, labels, len(classes), seed=seed),
                        100 / len(classes)))
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
    results = probe_text_binding(model, args.seed)
    print(f'{len(binding_captions(args.seed))} captions "a C1 K1 REL a C2 K2 on a BG background", '
          'probes fit on 70%, test accuracy on 30%')
    print(f'| probe | accuracy % | chance % |\n|---|---|---|')
    for name, accuracy, chance in results:
        print(f'| {name} | {accuracy:.1f} | {chance:.1f} |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
