"""Compare runs of tools/test.py on shapes captions, caption by caption, with confidence intervals.

    python tools/shapes_compare.py --run NAME DIR [DIR ...] --run NAME DIR [DIR ...] ... [--boot N]
                                   [--margin M] [--json FILE] [--plot FILE.png]

Each ``--run`` is a name and the ``--out-dir`` image folders of ``tools/test.py`` (the
``NNNNN_slug.png`` files, prompt in their text metadata). Several folders in one run are the same
captions drawn with other seeds (e.g. a prompt file with ``seed = index + 1000``); a run's score per
caption is its mean over them. The first run is the reference. Every run must hold the same captions
(index -> prompt).

Prints, as markdown: every run's ``ShapesAccuracy`` per attribute (each folder, then pooled), how its
count errors split into too many and too few shapes, and each later run's points against the
reference with a 95% bootstrap interval over captions (resampling captions keeps the two runs of a
caption together, so caption difficulty cancels). Why: on the 256 held-out captions two runs of the
same sampler with other seeds differ by up to 6 points on an attribute, so a gap needs its interval
(docs/benchmarks.md). ``--margin M`` adds a verdict per gap: "no worse" (the interval lies above -M),
"worse" (below -M) or "undecided". ``--json`` writes the same numbers; ``--plot`` draws the gaps.
"""
import argparse
import glob
import json
import os.path as osp
import sys

import numpy as np
from PIL import Image

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from projects.glide.datasets.shapes import parse_caption  # noqa: E402
from projects.glide.engine.cli_checks import (  # noqa: E402
    UsageError,
    check_output_file,
    nonnegative_float,
    positive_int,
)
from projects.glide.engine.grid import IMAGE_NAME, read_png_text  # noqa: E402
from projects.glide.evaluation.shapes_accuracy import ATTRIBUTES as JUDGED  # noqa: E402
from projects.glide.evaluation.shapes_accuracy import judge_image  # noqa: E402

#: the judged attributes, in ShapesAccuracy's order, then every attribute right
ATTRIBUTES = JUDGED + ('all',)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Compare tools/test.py runs on shapes captions, '
                                     'caption by caption, with 95% bootstrap intervals')
    parser.add_argument('--run', dest='runs', nargs='+', action='append', required=True,
                        metavar=('NAME', 'DIR'),
                        help='a run: its name and image folders (seed sets of the same captions); the '
                        'first run is the reference')
    parser.add_argument('--boot', type=positive_int, default=4000, help='bootstrap resamples (default 4000)')
    parser.add_argument('--margin', type=nonnegative_float, default=None,
                        help='also judge each gap against this many points: "no worse" when its interval '
                        'lies above -MARGIN, "worse" when it lies below, else "undecided"')
    parser.add_argument('--json', help='also write the numbers to this JSON file')
    parser.add_argument('--plot', help='also draw the gaps against the reference to this PNG')
    return parser.parse_args(argv)


def check_run(words: list):
    """``[NAME, DIR, ...]`` -> (name, [dir, ...]); every folder must exist."""
    if len(words) < 2:
        raise UsageError(f'--run takes a name and at least one image folder, got {" ".join(words)!r}')
    name, folders = words[0], words[1:]
    for folder in folders:
        if not osp.isdir(folder):
            raise UsageError(f'run {name}: image folder {folder} not found')
    return name, folders


def read_folder(folder: str) -> dict:
    """index -> (prompt, path) of the test images in ``folder``."""
    images = {}
    for path in sorted(glob.glob(osp.join(glob.escape(folder), '*.png'))):
        match = IMAGE_NAME.match(osp.basename(path))
        if match:
            images[int(match.group(1))] = (read_png_text(path).get('prompt'), path)
    if not images:
        raise UsageError(f'{folder} holds no test images (NNNNN_slug.png from tools/test.py)')
    return images


def judge_folder(folder: str, captions: dict, first: str) -> list:
    """Per caption (in index order): ``{attribute: bool | None}`` plus ``found`` / ``expected`` shapes;
    ``captions`` (index -> prompt) are those of the folder ``first``."""
    images = read_folder(folder)
    for index in sorted(set(images) | set(captions)):
        here, there = images.get(index, (None,))[0], captions.get(index)
        if here != there:
            raise UsageError(f'{folder} and {first} hold other captions: image {index} is {here!r} in one and '
                             f'{there!r} in the other (compare runs of one prompt set)')
    records = []
    for index in sorted(captions):
        try:
            spec = parse_caption(captions[index])
        except ValueError:
            raise UsageError(f'{images[index][1]}: prompt {captions[index]!r} is not a shapes caption') from None
        with Image.open(images[index][1]) as im:
            judged = judge_image(np.asarray(im.convert('RGB')), spec)
        record = {a: judged[a] for a in JUDGED}
        record.update(all=judged['all_correct'], found=len(judged['detected']['components']),
                      expected=len(spec.shapes))
        records.append(record)
    return records


def caption_scores(folders_records: list, attribute: str) -> np.ndarray:
    """(captions,) mean over the folders of 0/1 per caption; NaN where the attribute does not apply."""
    values = np.array([[np.nan if r[attribute] is None else float(r[attribute]) for r in records]
                       for records in folders_records])
    return values.mean(0)


def paired_gap(run: np.ndarray, reference: np.ndarray, boot: int, seed: int = 0) -> dict:
    """Points of ``run`` against ``reference`` (per-caption scores in [0, 1], NaN = not applicable) and
    the 95% percentile bootstrap interval over captions; None where no caption applies."""
    keep = ~np.isnan(reference)
    diff = 100 * (run[keep] - reference[keep])
    if diff.size == 0:
        return None
    means = diff[np.random.default_rng(seed).integers(0, diff.size, (boot, diff.size))].mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return dict(gap=float(diff.mean()), low=float(low), high=float(high), captions=int(diff.size))


def score(values: np.ndarray):
    """Percent over the captions where the attribute applies; None where none does."""
    values = values[~np.isnan(values)]
    return float(100 * values.mean()) if values.size else None


def compare(runs: list, boot: int, margin=None) -> dict:
    """``runs``: [(name, [folder, ...])]; returns the numbers the tool prints (with ``margin``, each
    gap's ``verdict``)."""
    captions = {i: p for i, (p, _) in read_folder(runs[0][1][0]).items()}
    judged = {name: [judge_folder(f, captions, runs[0][1][0]) for f in folders] for name, folders in runs}
    out = dict(captions=len(captions), runs={}, gaps={})
    for name, folders in runs:
        recs = judged[name]
        out['runs'][name] = dict(
            folders=folders,
            scores={a: [score(caption_scores([r], a)) for r in recs]  # each folder, then pooled if several
                    + ([score(caption_scores(recs, a))] if len(recs) > 1 else []) for a in ATTRIBUTES},
            too_many=sum(x['found'] > x['expected'] for r in recs for x in r),
            too_few=sum(x['found'] < x['expected'] for r in recs for x in r))
    ref_name = runs[0][0]
    for name, _ in runs[1:]:
        out['gaps'][name] = {
            a: paired_gap(caption_scores(judged[name], a), caption_scores(judged[ref_name], a), boot)
            for a in ATTRIBUTES}
    if margin is not None:
        out['margin'] = margin
        for gap in (g for gaps in out['gaps'].values() for g in gaps.values() if g is not None):
            gap['verdict'] = verdict(gap, margin)
    return out


def verdict(gap: dict, margin: float) -> str:
    """'no worse' / 'worse' / 'undecided': where the 95% interval lies against ``-margin`` points."""
    if gap['low'] > -margin:
        return 'no worse'
    return 'worse' if gap['high'] < -margin else 'undecided'


def _fmt(value) -> str:
    return '-' if value is None else f'{value:.1f}'


def markdown(result: dict, ref_name: str) -> str:
    head = '| run | folder | ' + ' | '.join(ATTRIBUTES) + ' |\n|' + ' --- |' * (len(ATTRIBUTES) + 2)
    lines = [f'{result["captions"]} captions; ShapesAccuracy (percent)', '', head]
    for name, run in result['runs'].items():
        labels = run['folders'] + ['pooled']
        for k in range(len(run['scores']['all'])):
            lines.append(f'| {name} | {labels[k]} | '
                         + ' | '.join(_fmt(run['scores'][a][k]) for a in ATTRIBUTES) + ' |')
    lines += ['', '| run | count errors: too many shapes | too few |', '| --- | --- | --- |']
    lines += [f'| {name} | {run["too_many"]} | {run["too_few"]} |' for name, run in result['runs'].items()]
    if result['gaps']:
        lines += ['', f'Points against {ref_name} (95% bootstrap interval over captions)', '',
                  '| run | ' + ' | '.join(ATTRIBUTES) + ' |', '|' + ' --- |' * (len(ATTRIBUTES) + 1)]
        for name, gaps in result['gaps'].items():
            cells = ['-' if g is None else f'{g["gap"]:+.1f} [{g["low"]:+.1f}, {g["high"]:+.1f}]'
                     for g in (gaps[a] for a in ATTRIBUTES)]
            lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
        if 'margin' in result:
            lines += ['', f'No worse than {ref_name} by more than {result["margin"]:g} points?', '',
                      '| run | ' + ' | '.join(ATTRIBUTES) + ' |', '|' + ' --- |' * (len(ATTRIBUTES) + 1)]
            lines += [f'| {name} | ' + ' | '.join('-' if gaps[a] is None else gaps[a]['verdict']
                                                  for a in ATTRIBUTES) + ' |'
                      for name, gaps in result['gaps'].items()]
    return '\n'.join(lines) + '\n'


def plot(result: dict, ref_name: str, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from projects.glide.fileio import atomic_path
    names = list(result['gaps'])
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.45 * len(ATTRIBUTES) * max(1, len(names)) ** 0.5))
    height = 0.8 / max(1, len(names))
    for k, name in enumerate(names):
        rows = [(y, g) for y, g in enumerate(result['gaps'][name][a] for a in ATTRIBUTES) if g is not None]
        ys = np.array([y for y, _ in rows]) - 0.4 + height * (k + 0.5)
        gaps = np.array([[g['gap'], g['low'], g['high']] for _, g in rows])
        ax.errorbar(gaps[:, 0], ys, xerr=[gaps[:, 0] - gaps[:, 1], gaps[:, 2] - gaps[:, 0]], fmt='o',
                    capsize=2, ms=4, label=name)
    ax.axvline(0, color='k', lw=0.8)
    if 'margin' in result:
        ax.axvspan(-result['margin'], result['margin'], color='0.9', zorder=0,
                   label=f'within {result["margin"]:g} points')
    ax.set_yticks(range(len(ATTRIBUTES)), ATTRIBUTES)
    ax.invert_yaxis()
    ax.set_xlabel(f'points against {ref_name} ({result["captions"]} captions; 95% bootstrap interval)')
    ax.grid(axis='x', alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format='png', dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        runs = [check_run(words) for words in args.runs]
        names = [name for name, _ in runs]
        if len(set(names)) != len(names):
            raise UsageError(f'run names must differ, got {", ".join(names)}')
        if args.plot and len(runs) < 2:
            raise UsageError('--plot draws gaps against the first run: give at least two runs')
        for path, what in ((args.json, '--json'), (args.plot, '--plot')):
            if path:
                check_output_file(path, what)
        result = compare(runs, args.boot, args.margin)
    except UsageError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    print(markdown(result, runs[0][0]), end='')
    if args.json:
        from projects.glide.fileio import atomic_write_text
        atomic_write_text(json.dumps(result, indent=2) + '\n', args.json)
    if args.plot:
        plot(result, runs[0][0], args.plot)
    return 0


if __name__ == '__main__':
    sys.exit(main())
