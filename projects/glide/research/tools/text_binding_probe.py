"""Does a shapes model tie each kind of shape to its colour? Prints the
tables of :mod:`projects.glide.research.probe` (its docstring says what each
one measures) as Markdown.

    python projects/glide/research/tools/text_binding_probe.py CONFIG CHECKPOINT [--seed 0] [--scenes 48]
        [--swaps 12] [--routed 0] [--own-phrase 0]
"""
import argparse
import os.path as osp
import sys
from typing import Dict, Sequence

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='a shapes model config (e.g. glide_tiny_shapes-64x64.py)')
    parser.add_argument('checkpoint', help='its weights (published or a training checkpoint)')
    parser.add_argument('--seed', type=int, default=0, help='relations, caption order, probe init, scenes')
    parser.add_argument('--scenes', type=int, default=48, help='two-shape scenes for the attention table')
    parser.add_argument('--swaps', type=int, default=12,
                        help='one-shape captions for the kind-source table (0: skip it)')
    parser.add_argument('--routed', type=int, default=0,
                        help='two-kind captions for the routed-attention table (0, the default: skip it)')
    parser.add_argument('--own-phrase', type=int, default=0,
                        help='two-kind captions for the own-phrase table (0, the default: skip it)')
    return parser.parse_args(argv)


def print_counts(title: str, row_name: str, outcomes: Sequence[str], counts: Dict[str, Dict[str, int]]):
    """Print a table of image counts ``{row: {outcome: images}}`` after a blank line and ``title``."""
    print(f'\n{title}')
    print(f'| {row_name} | ' + ' | '.join(outcomes) + ' |')
    print('|---|' + '---|' * len(outcomes))
    for row, by_outcome in counts.items():
        print(f'| {row} | ' + ' | '.join(str(by_outcome[o]) for o in outcomes) + ' |')


def main(argv=None) -> int:
    args = parse_args(argv)
    for path in (args.config, args.checkpoint):
        if not osp.isfile(path):
            print(f'error: file not found: {path}', file=sys.stderr)
            return 1
    from mmagic.apis import init_model
    from mmengine.registry import init_default_scope

    from projects.glide.research import probe
    init_default_scope('mmagic')
    model = init_model(args.config, args.checkpoint, device='cpu')
    rows = probe.binding_captions(args.seed)
    results = probe.probe_text_binding(model, rows, args.seed)
    print(f'{len(rows)} captions "a C1 K1 REL a C2 K2 on a BG background", '
          'probes fit on 70%, test accuracy on 30%')
    print('| probe | accuracy % | chance % |\n|---|---|---|')
    for name, accuracy, chance in results:
        print(f'| {name} | {accuracy:.1f} | {chance:.1f} |')
    print(f'\nattention (% of a pixel\'s) from the pixels of each shape, {args.scenes} noised true renders')
    print('| timestep | level | pixels of | ' + ' | '.join(probe.ATTENTION_COLUMNS) + ' |')
    print('|---|---|---|' + '---|' * len(probe.ATTENTION_COLUMNS))
    for t, level, shape, share in probe.attention_on_words(model, args.scenes, seed=args.seed):
        print(f'| {t} | {level}x{level} | shape {shape} | ' + ' | '.join(f'{v:.1f}' for v in share.values()) + ' |')
    if args.swaps:
        print_counts(f'kind drawn for {args.swaps} one-shape captions with one text feature from the caption '
                     'with the kind changed', 'feature from the changed caption', probe.KIND_OUTCOMES,
                     probe.kind_source(model, args.swaps, args.seed))
    if args.routed:
        print_counts(f'kinds drawn for {args.routed} captions with two kinds, with the kind words\' attention '
                     'as trained and routed by the colour words\'', 'sampling', probe.TWO_KIND_OUTCOMES,
                     probe.kind_routing(model, args.routed, args.seed))
    if args.own_phrase:
        print_counts(f'kinds drawn for {args.own_phrase} captions with two kinds from their kind-neutral layout at '
                     't = 800, each shape\'s box reading the caption as trained or only its own phrase',
                     'sampling', probe.TWO_KIND_OUTCOMES, probe.own_phrase_reading(model, args.own_phrase, args.seed))
    return 0


if __name__ == '__main__':
    sys.exit(main())
