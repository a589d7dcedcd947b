"""tools/shapes_compare.py on folders of true renders (every attribute right) and of renders with
some shapes wiped out, written as tools/test.py writes its images."""
import json
import re

import numpy as np
import pytest
from PIL import Image
from tool_helpers import fails, load_tool

from projects.glide.datasets.shapes import ShapesDataset
from projects.glide.engine.grid import image_filename, save_png

N = 8


@pytest.fixture(scope='module')
def compare_tool():
    return load_tool('shapes_compare')


@pytest.fixture(scope='module')
def items():
    ds = ShapesDataset('held_out', size=N, seed=1, resolution=64)
    return [ds[i] for i in range(N)]


def write_run(folder, items, wiped=(), prompts=None):
    """The items' true renders as tools/test.py names them; ``wiped``: items drawn as bare background."""
    folder.mkdir()
    for i, item in enumerate(items):
        img = item['img'].clone()
        if i in wiped:
            img[:] = img[:, :1, :1].clone()  # the top-left pixel is background (no shape touches the corner)
        prompt = prompts[i] if prompts else item['prompt']
        save_png(img, str(folder / image_filename(i, prompt)), dict(prompt=prompt, index=str(i), seed=str(i)))
    return str(folder)


def test_gaps_and_intervals_caption_by_caption(compare_tool, items, tmp_path):
    ref = write_run(tmp_path / 'ref', items)
    worse = write_run(tmp_path / 'worse', items, wiped=(0, 3, 4, 6))
    again = write_run(tmp_path / 'again', items)
    result = compare_tool.compare([('ref', [ref]), ('same', [again]), ('worse', [worse]),
                                   ('half', [ref, worse])], boot=500, margin=2)
    assert result['captions'] == N
    for attribute in ('background', 'shape_color', 'shape_class', 'shape_count', 'all'):
        assert result['runs']['ref']['scores'][attribute] == [100.0]
    # wiped captions lose every shape: colour, class and count wrong, the background still right
    assert result['runs']['worse']['scores']['shape_count'] == [50.0]
    assert result['runs']['worse']['scores']['background'] == [100.0]
    assert result['runs']['half']['scores']['shape_count'] == [100.0, 50.0, 75.0]  # each folder, pooled
    assert (result['runs']['worse']['too_many'], result['runs']['worse']['too_few']) == (0, 4)
    same, worse_gap, half = (result['gaps'][n]['shape_count'] for n in ('same', 'worse', 'half'))
    assert same == dict(gap=0.0, low=0.0, high=0.0, captions=N, verdict='no worse')
    assert worse_gap['gap'] == pytest.approx(-50.0) and half['gap'] == pytest.approx(-25.0)
    assert worse_gap['low'] < worse_gap['gap'] < worse_gap['high'] <= 0
    assert worse_gap['verdict'] == 'worse'  # 4 of 8 captions wrong: no resample comes near -2
    assert result['gaps']['worse']['background']['verdict'] == 'no worse'
    # captions where an attribute does not apply are left out of its gap
    sized = sum(any(s['size'] is not None for s in item['scene']['shapes']) for item in items)
    assert result['gaps']['worse']['size']['captions'] == sized


def test_undecided_when_the_interval_straddles_the_margin(compare_tool):
    ref = np.ones(40)
    run = np.ones(40)
    run[:2] = 0  # 5 points worse on 40 captions: the interval reaches past -2 and up to 0
    gap = compare_tool.paired_gap(run, ref, boot=2000)
    assert gap['gap'] == pytest.approx(-5.0) and gap['high'] == 0.0 and gap['low'] < -5
    assert compare_tool.verdict(gap, 2) == 'undecided'
    assert compare_tool.verdict(gap, 20) == 'no worse'
    assert compare_tool.paired_gap(np.full(3, np.nan), np.full(3, np.nan), boot=10) is None


def test_cli_prints_markdown_and_writes_json_and_plot(compare_tool, items, tmp_path, capsys):
    ref = write_run(tmp_path / 'ref', items)
    worse = write_run(tmp_path / 'worse', items, wiped=(1,))
    rc = compare_tool.main(['--run', 'ddpm100', ref, '--run', 'fast', worse, '--boot', '200', '--margin', '2',
                            '--json', str(tmp_path / 'r.json'), '--plot', str(tmp_path / 'gaps.png')])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.startswith(f'{N} captions; ShapesAccuracy (percent)')
    assert f'| fast | {worse} | 100.0 |' in out
    assert 'Points against ddpm100 (95% bootstrap interval over captions)' in out
    assert '| fast | +0.0 [+0.0, +0.0] | -12.5 [' in out  # background, then colour
    assert 'No worse than ddpm100 by more than 2 points?' in out
    saved = json.loads((tmp_path / 'r.json').read_text())
    assert saved['gaps']['fast']['shape_count']['gap'] == pytest.approx(-12.5)
    assert saved['margin'] == 2
    with Image.open(tmp_path / 'gaps.png') as im:
        assert im.format == 'PNG' and im.size[0] > 500


def test_bad_input(compare_tool, items, tmp_path, capsys):
    ref = write_run(tmp_path / 'ref', items)
    fails(compare_tool, ['--run', 'a'], capsys, "--run takes a name and at least one image folder, got 'a'")
    fails(compare_tool, ['--run', 'a', str(tmp_path / 'nope')], capsys, 'run a: image folder .*nope not found')
    fails(compare_tool, ['--run', 'a', ref, '--run', 'a', ref], capsys, 'run names must differ, got a, a')
    fails(compare_tool, ['--run', 'a', ref, '--plot', str(tmp_path / 'p.png')], capsys,
          '--plot draws gaps against the first run: give at least two runs')
    fails(compare_tool, ['--run', 'a', ref, '--json', str(tmp_path / 'no' / 'r.json')], capsys,
          'cannot write --json .*r.json: directory .*no does not exist')
    (tmp_path / 'empty').mkdir()
    fails(compare_tool, ['--run', 'a', str(tmp_path / 'empty')], capsys,
          'empty holds no test images \\(NNNNN_slug.png from tools/test.py\\)')
    other = write_run(tmp_path / 'other', items[:N - 1] + items[:1])
    fails(compare_tool, ['--run', 'a', ref, '--run', 'b', other], capsys,
          'other and .*ref hold other captions: ' + re.escape(
              f"image {N - 1} is '{items[0]['prompt']}' in one and '{items[N - 1]['prompt']}' in the other"))
    fewer = write_run(tmp_path / 'fewer', items[:N - 1])
    fails(compare_tool, ['--run', 'a', ref, '--run', 'b', fewer], capsys, f'image {N - 1} is None in one')
    junk = write_run(tmp_path / 'junk', items[:1], prompts=['hello world'])
    fails(compare_tool, ['--run', 'a', junk], capsys, "prompt 'hello world' is not a shapes caption")
    assert not (tmp_path / 'p.png').exists()
