"""The text-binding probe (projects/glide/research/probe.py) and its CLI
(projects/glide/research/tools/text_binding_probe.py): its linear probes,
captions, pixel masks, attention processors, and the tables it prints for a
model."""
import os.path as osp
import sys

import pytest
import torch
from tool_helpers import BASE_CFG, REPO, run

from projects.glide.research import probe
from projects.glide.research.attention import KindRoutingAttnProcessor

PROBE_CLI = osp.join(REPO, 'projects', 'glide', 'research', 'tools', 'text_binding_probe.py')


def test_probe_reads_linear_codes_and_nothing_else():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (900, ), generator=gen)
    noise = torch.randn(900, 16, generator=gen)
    coded = noise.clone()
    coded[:, :3] += 3 * torch.nn.functional.one_hot(labels, 3)  # the label, linearly readable
    assert probe.linear_probe_accuracy(coded, labels.tolist(), 3) > 95
    assert abs(probe.linear_probe_accuracy(noise, labels.tolist(), 3) - 100 / 3) < 10
    with pytest.raises(ValueError, match='train_fraction 1.0 leaves no training or no test rows of 900'):
        probe.linear_probe_accuracy(coded, labels.tolist(), 3, train_fraction=1.0)


def test_probe_captions_and_word_positions():
    from projects.glide.datasets.shapes import parse_caption
    from projects.glide.models.tokenizer import GlideTokenizer
    rows = probe.binding_captions(seed=0)
    assert len(rows) == 8 * 7 * 6 * 6 == len({r['caption'] for r in rows})
    assert rows != probe.binding_captions(seed=1) and rows == probe.binding_captions(seed=0)
    tokenizer = GlideTokenizer(text_ctx=32)
    for row in rows[:50]:
        scene = parse_caption(row['caption'])
        assert [(s.color, s.kind) for s in scene.shapes] == [(row['c1'], row['k1']), (row['c2'], row['k2'])]
        assert scene.background == row['bg'] and row['k1'] != row['k2'] and row['c1'] != row['c2']
        tokens = tokenizer.encode(row['caption'])
        positions = probe.word_positions(tokenizer, row['caption'])
        assert positions.pop('pad') == len(tokens)
        for word, index in positions.items():
            assert tokens[index] == tokenizer.encode(' ' + row[word])[-1]
    # a relation of several words moves the second shape's words along
    caption = probe.two_shape_caption('purple', 'circle', 'to the left of', 'white', 'square', 'red')
    assert caption == 'a purple circle to the left of a white square on a red background'
    assert probe.word_positions(tokenizer, caption) == dict(c1=1, k1=2, c2=len(tokenizer.encode(
        'a purple circle to the left of a white')) - 1, k2=len(tokenizer.encode(
            'a purple circle to the left of a white square')) - 1, pad=len(tokenizer.encode(caption)))


def test_probe_shape_pixels_keep_each_shape_to_itself():
    from projects.glide.datasets.shapes import Scene, Shape
    scene = Scene('white', [Shape('square', 'red', 'large', center=(0.25, 0.5), extent=0.25),
                            Shape('circle', 'blue', 'small', center=(0.6, 0.5), extent=0.5)], 'to the left of')
    pixels = probe.shape_pixels(scene, 16)
    assert pixels.shape == (2, 16, 16) and pixels.dtype == bool
    # the square covers columns 2-5 and rows 6-9 in full
    assert pixels[0].sum() == 16 and pixels[0][6:10, 2:6].all()
    # the circle (radius 4 pixels at column 9.6, row 8) loses the pixels it shares with the square
    assert 40 < pixels[1].sum() < 16 * 3.14 and not (pixels[0] & pixels[1]).any()
    assert pixels[1][8, 9] and not pixels[1][8, 5]


def test_probe_routes_each_kind_word_by_its_colour_word():
    """With a ``KindRoutingAttnProcessor`` a text attention block mixes
    its values with the kind words' weights scaled by 2 x the pixel's share
    of c1 / c2 attention (renormalised), on the routed rows only; with its
    own processor back, the block is as before."""
    from projects.glide.models.unet import TextAttentionBlock
    torch.manual_seed(0)
    block = TextAttentionBlock(32, num_head_channels=16, encoder_channels=8).eval()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x, text = torch.randn(3, 32, 4, 4), torch.randn(3, 8, 6)
    positions = torch.tensor([[[0, 1], [3, 4]], [[1, 2], [4, 5]]])  # rows 0 and 1: (colour, kind) per shape
    with torch.no_grad():
        plain = block(x, text)
        weights = block.attention_weights(x, text)
        _, _, v = block.queries_keys_values(x, text)
        shares = []
        for row, ((c1, k1), (c2, k2)) in enumerate(positions.tolist()):
            on_c1, on_c2 = weights[row, :, :, c1].mean(0), weights[row, :, :, c2].mean(0)
            share = on_c1 / (on_c1 + on_c2)
            shares.append(share)
            weights[row, :, :, k1] *= 2 * share
            weights[row, :, :, k2] *= 2 - 2 * share
        assert torch.cat(shares).min() < 0.4 and torch.cat(shares).max() > 0.5  # weight moves both ways
        weights /= weights.sum(-1, keepdim=True)
        expected = x + block.proj_out((weights @ v).transpose(2, 3).reshape(3, 32, -1)).reshape(3, 32, 4, 4)
        default = block.processor
        block.processor = KindRoutingAttnProcessor(positions, default)
        routed = block(x, text)
        no_text = block(x, None)
        block.processor = default
        torch.testing.assert_close(routed, expected)
        assert (routed[:2] - plain[:2]).abs().max() > 1e-3
        torch.testing.assert_close(routed[2], plain[2])  # a row beyond the positions: not routed
        torch.testing.assert_close(no_text, block(x, None))
        torch.testing.assert_close(block(x, text), plain)  # the default processor again


def test_probe_boxes_read_only_their_own_phrase():
    """Inside ``boxes_read_own_phrase``, given ``with_phrase_states``, the
    UNet's first B rows give what the plain UNet gives from the caption's
    token states where no box is, and from shape 1's phrase states where
    shape 1's box covers every map; a row beyond B reads the caption;
    afterwards the UNet is as before."""
    from projects.glide.models import Text2ImUNet
    torch.manual_seed(0)
    unet = Text2ImUNet(image_size=16, base_channels=32, channel_mult=(1, 2), resblocks_per_downsample=1,
                       attention_res=(8, 16), num_head_channels=32, text_ctx=6, xf_width=32, xf_layers=1,
                       xf_heads=1).eval()
    for name, p in unet.named_parameters():
        if 'encoder_kv' in name or 'proj_out' in name:
            torch.nn.init.normal_(p, std=0.3)  # the text decides the output
    tokens, ones = torch.randint(0, 1000, (3, 6)), torch.ones(3, 6, dtype=torch.bool)
    x, t = torch.randn(3, 3, 16, 16), torch.full((3, ), 500)
    with torch.no_grad():
        caption = unet.encode_text(tokens, ones)
        phrases = unet.encode_text(torch.randint(0, 1000, (4, 6)), ones[:1].expand(4, -1))['xf_out']
        phrases = phrases.reshape(2, 2, 32, 6)  # (B, shape, width, T)
        plain = unet(x, t, text_emb=caption)
        from_shape_1 = unet(x, t, text_emb=dict(caption, xf_out=torch.cat([phrases[:, 0], caption['xf_out'][2:]])))
        assert (from_shape_1[:2] - plain[:2]).abs().max() > 1e-2
        for boxes, expected in ((0, plain), (1, from_shape_1)):
            boxes = {side: torch.tensor([bool(boxes), False])[None, :, None].expand(2, 2, side * side)
                     for side in (16, 8)}
            with probe.boxes_read_own_phrase(unet, boxes, text=6):
                out = unet(x, t, text_emb=probe.with_phrase_states(caption, phrases))
            torch.testing.assert_close(out[:2], expected[:2], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(out[2], plain[2], atol=1e-4, rtol=1e-4)
        assert all(type(p).__name__ == 'SDPAAttnProcessor' for p in unet.attn_processors.values())
        torch.testing.assert_close(unet(x, t, tokens, ones), plain)  # the default processors again


def test_probe_start_strength_keeps_the_timesteps_up_to_the_start():
    """The own-phrase table starts sampling at t = 800 through img2img's
    ``strength``: the kept timesteps are those at or below the start."""
    from projects.glide.models.diffusion import GlideDDIMScheduler
    from projects.glide.models.sampling import strength_timestep
    scheduler = GlideDDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(25)
    full = scheduler.timesteps.tolist()
    strength = probe.start_strength(scheduler, 800)
    assert strength == 0.8
    scheduler.set_timesteps(25, start_timestep=strength_timestep(strength, 1000))
    assert scheduler.timesteps.tolist() == [t for t in full if t <= 800] and scheduler.timesteps[0] == 800
    with pytest.raises(ValueError, match='no sampling timestep at or below -1'):
        probe.start_strength(scheduler, -1)


def test_probe_prints_a_table_for_a_model(ckpts, tmp_path):
    r = run([sys.executable, PROBE_CLI, BASE_CFG, ckpts['base'], '--scenes', '4',
             '--swaps', '2', '--routed', '3', '--own-phrase', '2'], cwd=tmp_path, timeout=480)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    lines = lines[next(i for i, line in enumerate(lines) if line.startswith('2016 captions')):]
    assert lines[1] == '| probe | accuracy % | chance % |'
    split = lines.index('')
    rows = [line.strip('| ').split(' | ') for line in lines[3:split]]
    assert [row[0] for row in rows] == [name for name, _, _ in probe.PROBES]
    accuracy = {row[0]: float(row[1]) for row in rows}
    assert all(0 <= a <= 100 for a in accuracy.values())
    # a random model's token states still say which word they hold
    assert accuracy['first colour token -> its colour (method check)'] > 90
    assert [float(row[2]) for row in rows] == [12.5] * 5 + [33.3] * 6
    # where the shapes' pixels look: per timestep, level (32x32 then 16x16) and shape
    assert lines[split + 1] == "attention (% of a pixel's) from the pixels of each shape, 4 noised true renders"
    assert lines[split + 2] == ('| timestep | level | pixels of | c1 | k1 | c2 | k2 | padding | caption '
                                '| own shape | other shape |')
    end = lines.index('', split + 1)
    rows = [line.strip('| ').split(' | ') for line in lines[split + 4:end]]
    assert [row[:3] for row in rows] == [[t, level, shape] for t in ('900', '600') for level in ('32x32', '16x16')
                                         for shape in ('shape 1', 'shape 2')]
    for row in rows:
        c1, k1, c2, k2, padding, caption, own, other = map(float, row[3:])
        assert 0 < c1 + k1 + c2 + k2 + padding <= caption + 0.3
        assert own > 0 and other > 0 and caption + own + other <= 100.3
    split = end
    assert lines[split + 1:split + 4] == [
        'kind drawn for 2 one-shape captions with one text feature from the caption with the kind changed',
        '| feature from the changed caption | caption kind | swapped kind | other or none |', '|---|---|---|---|']
    end = lines.index('', split + 1)
    rows = [line.strip('| ').split(' | ') for line in lines[split + 4:end]]
    assert [row[0] for row in rows] == ['xf_proj', 'xf_out'] and all(sum(map(int, row[1:])) == 2 for row in rows)
    assert lines[end + 1:end + 4] == [
        "kinds drawn for 3 captions with two kinds, with the kind words' attention as trained and routed by the "
        "colour words'", '| sampling | both right | swapped | one kind twice | other or none |',
        '|---|---|---|---|---|']
    split = lines.index('', end + 1)
    rows = [line.strip('| ').split(' | ') for line in lines[end + 4:split]]
    assert [row[0] for row in rows] == ['as trained', 'kind words routed by colour']
    assert all(sum(map(int, row[1:])) == 3 for row in rows)
    assert lines[split + 1:split + 4] == [
        "kinds drawn for 2 captions with two kinds from their kind-neutral layout at t = 800, each shape's box "
        "reading the caption as trained or only its own phrase",
        '| sampling | both right | swapped | one kind twice | other or none |', '|---|---|---|---|---|']
    rows = [line.strip('| ').split(' | ') for line in lines[split + 4:]]
    assert [row[0] for row in rows] == ['as trained', 'each box reads its own phrase']
    assert all(sum(map(int, row[1:])) == 2 for row in rows)
    r = run([sys.executable, PROBE_CLI, BASE_CFG, 'none.pth'], cwd=tmp_path)
    assert r.returncode == 1 and 'error: file not found: none.pth' in r.stderr


def test_shipped_model_draws_the_kind_its_token_states_say():
    """The kind-source table on the shipped weights: with the per-token states
    of the caption with the kind changed the model draws the changed kind,
    with only the pooled feature changed it draws the caption's kind."""
    from mmagic.apis import init_model
    from mmengine.registry import init_default_scope
    init_default_scope('mmagic')
    model = init_model(BASE_CFG, osp.join(REPO, 'projects', 'glide', 'weights', 'glide_tiny_shapes-64x64.pth'),
                       device='cpu')
    counts = probe.kind_source(model, count=4)
    assert counts['xf_out']['swapped kind'] >= 3 and counts['xf_proj']['caption kind'] >= 3
    assert all(sum(c.values()) == 4 for c in counts.values())
    assert 'encode_text' not in vars(model.unet)  # nothing patched
