"""The research training terms: the word grounding and off-phrase losses on
the text attention, as functions and as ``Glide`` auxiliary losses, and the
kind pixel weight."""
import pytest
import torch
from torch import nn

import projects.glide.research  # noqa: F401  (registers the research components)
from projects.glide.models.training import AuxLossInputs, pixel_weight
from projects.glide.research.attention import recorded_text_attention
from projects.glide.research.losses import (
    KindPixelWeight,
    OffPhraseLoss,
    TokenGroundingLoss,
    off_phrase_attention_loss,
    token_grounding_loss,
)


def _tiny_unet():
    from projects.glide.models import Text2ImUNet
    torch.manual_seed(0)
    return Text2ImUNet(image_size=32, base_channels=32, channel_mult=(1, 2), resblocks_per_downsample=1,
                       attention_res=(16, ), num_head_channels=32, text_ctx=8, xf_width=32, xf_layers=1,
                       xf_heads=1)


@pytest.fixture(scope='module')
def base_model(reference_model):
    """The tiny reference cascade with its upsampler detached (base stage only)."""
    import copy
    model = copy.deepcopy(reference_model)
    model.unet_up = model.diffusion_scheduler_up = None
    return model


def test_grounding_loss_is_the_share_of_each_words_attention_off_its_object():
    """Two heads on a 2x2 map with 3 text positions; the object covers the
    top-left quarter of a 4x4 image, i.e. the first of the 4 pixels."""
    attention = torch.zeros(2, 2, 4, 3 + 4)
    attention[0, 0, :, 0] = torch.tensor([0.6, 0.0, 0.2, 0.2])
    attention[0, 1, :, 0] = torch.tensor([0.0, 0.2, 0.0, 0.0])  # head mean on word 0: .3 .1 .1 .1
    attention[0, :, :, 2] = torch.tensor([0.0, 0.2, 0.2, 0.0])  # word 2: never on the object
    attention[:, :, :, 3:] = 0.5  # pixels as keys play no part
    attention[1] = attention[0]
    positions = torch.tensor([[[0, 2]], [[-1, 2]]])
    masks = torch.zeros(2, 1, 4, 4)
    masks[:, :, :2, :2] = 1.
    loss, valid = token_grounding_loss(attention, positions, masks)
    torch.testing.assert_close(loss, torch.tensor([[[0.25, 1.0]], [[0.0, 1.0]]]))
    assert valid.tolist() == [[[True, True]], [[False, True]]]
    # soft coverage counts in proportion: half covered, the inside share halves
    loss, _ = token_grounding_loss(attention, positions, masks * 0.5)
    torch.testing.assert_close(loss[0, 0, 0], torch.tensor(0.75 ** 2))


def test_grounding_loss_takes_a_region_for_each_word():
    """Masks (B, S, W, R, R) ground each word of an object on its own region;
    one region repeated for every word is the same as (B, S, R, R)."""
    gen = torch.Generator().manual_seed(0)
    attention = torch.rand(2, 2, 16, 5 + 16, generator=gen).softmax(-1)
    positions = torch.tensor([[[0, 1], [2, 3]], [[4, 0], [-1, -1]]])
    masks = torch.rand(2, 2, 8, 8, generator=gen)
    shared, valid = token_grounding_loss(attention, positions, masks)
    per_word, per_word_valid = token_grounding_loss(attention, positions, masks[:, :, None].expand(2, 2, 2, 8, 8))
    torch.testing.assert_close(per_word, shared)
    assert torch.equal(per_word_valid, valid) and valid.tolist() == [[[True] * 2] * 2, [[True] * 2, [False] * 2]]
    # the second word of each object on the whole image: its attention is all inside, nothing to pay
    regions = torch.stack([masks, torch.ones_like(masks)], 2)
    loss, _ = token_grounding_loss(attention, positions, regions)
    torch.testing.assert_close(loss[:, :, 0], shared[:, :, 0])
    torch.testing.assert_close(loss[:, :, 1], torch.zeros(2, 2))
    assert (shared[:, :, 1][valid[:, :, 1]] > 0).all()


@pytest.mark.parametrize('shape, positions, masks, message', [
    ((1, 1, 5, 8), [[[0]]], (1, 1, 4, 4), 'attention must be over a square feature map, got 5 pixels'),
    ((1, 1, 4, 7), [[[0]], [[0]]], (1, 1, 4, 4), r'must match the attention\'s B=1 and each other; '
                                                 r'got \(2, 1, 1\) and \(1, 1, 4, 4\)'),
    ((1, 1, 4, 7), [[[0]]], (1, 2, 4, 4), r'got \(1, 1, 1\) and \(1, 2, 4, 4\)'),
    ((1, 1, 4, 7), [[[0, 1]]], (1, 1, 3, 4, 4), r'or \(B, S, W, R, R\) must match .* got \(1, 1, 2\) and '
                                                 r'\(1, 1, 3, 4, 4\)'),
    ((1, 1, 4, 7), [[[3]]], (1, 1, 4, 4), 'word positions must be < the 3 text positions, got 3'),
])
def test_grounding_loss_errors(shape, positions, masks, message):
    with pytest.raises(ValueError, match=message):
        token_grounding_loss(torch.rand(shape), torch.tensor(positions), torch.rand(masks))


def test_grounding_loss_teaches_the_unet_where_each_word_belongs():
    """A few optimiser steps on the loss alone move most of each word's
    attention onto its object: the words have to reach the right pixels
    through the text encoder and the attention's keys and queries."""
    unet = _tiny_unet()
    gen = torch.Generator().manual_seed(0)
    x, t = torch.randn(4, 3, 32, 32, generator=gen), torch.randint(0, 1000, (4, ), generator=gen)
    tokens, mask = torch.randint(0, 100, (4, 8), generator=gen), torch.ones(4, 8, dtype=torch.bool)
    positions = torch.tensor([[[1, 2], [4, 5]]] * 4)
    masks = torch.zeros(4, 2, 32, 32)
    masks[:, 0, :16, :16] = 1.  # object 1 top left, object 2 bottom right
    masks[:, 1, 16:, 16:] = 1.
    optimizer = torch.optim.Adam(unet.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        with recorded_text_attention(unet) as records:
            unet(x, t, tokens, mask)
        loss = torch.stack([token_grounding_loss(w, positions, masks)[0].mean() for _, w in records]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 0.5  # a quarter of the image each: about (1 - 1/4)^2 at first
    assert losses[-1] < 0.3 * losses[0]


def test_off_phrase_loss_is_the_share_of_a_boxs_text_attention_on_the_other_words_and_padding():
    """One head on a 2x2 map, 5 text positions (the last one padding);
    object 0's words at 0 and 1, object 1's at 2 and 3. Box 0 covers pixel 0
    and half of pixel 1 of the 4x4 image's 2x2 blocks, box 1 pixel 3."""
    attention = torch.zeros(2, 1, 4, 5 + 4)
    attention[:, 0, 0, :5] = torch.tensor([0.2, 0.1, 0.1, 0.0, 0.1])  # off for object 0: 0.2 of 0.5
    attention[:, 0, 1, :5] = torch.tensor([0.1, 0.1, 0.0, 0.0, 0.0])  # off: 0
    attention[:, 0, 2, :5] = torch.tensor([0.0, 0.0, 0.5, 0.5, 0.0])  # in no box
    attention[:, 0, 3, :5] = torch.tensor([0.3, 0.0, 0.1, 0.0, 0.0])  # off for object 1: 0.3 of 0.4
    attention[..., 5:] = 0.25  # pixels as keys play no part
    positions = torch.tensor([[[0, 1], [2, 3]], [[0, 1], [-1, -1]]])  # row 1: object 1 has no word
    boxes = torch.zeros(2, 2, 4, 4)
    boxes[:, 0, :2, :2] = 1.
    boxes[:, 0, :2, 2] = 1.  # half of pixel 1
    boxes[:, 1, 2:, 2:] = 1.
    token_mask = torch.tensor([[True] * 4 + [False]] * 2)
    loss, valid = off_phrase_attention_loss(attention, positions, boxes, token_mask)
    # row 1: with no other object's words only the padding is off (0.1 of 0.5 at pixel 0, 0 at pixel 1)
    torch.testing.assert_close(loss, torch.tensor([[(0.4 + 0.5 * 0.0) / 1.5, 0.75], [0.2 / 1.5, 0.0]]))
    assert valid.tolist() == [[True, True], [True, False]]
    with pytest.raises(ValueError, match=r"token_mask \(B, T\) must match the attention's B=2, T=5 and each "
                                         r'other; got \(2, 2, 2\), \(2, 2, 4, 4\) and \(2, 4\)'):
        off_phrase_attention_loss(attention, positions, boxes, token_mask[:, :4])
    with pytest.raises(ValueError, match='word positions must be < the 5 text positions, got 5'):
        off_phrase_attention_loss(attention, positions + 2 * (positions == 3), boxes, token_mask)
    with pytest.raises(ValueError, match='attention must be over a square feature map, got 3 pixels'):
        off_phrase_attention_loss(attention[:, :, :3, :8], positions, boxes, token_mask)


def _grounding_batch(model):
    """Two captions, each shape's colour and kind word, and masks of the
    left and right halves."""
    from projects.glide.datasets import Scene, Shape
    from projects.glide.research.transforms import shape_word_positions
    prompts = ['a red circle to the left of a blue square', 'a green triangle to the left of a red circle']
    scenes = [Scene('white', [Shape('circle', 'red'), Shape('square', 'blue')], 'to the left of'),
              Scene('white', [Shape('triangle', 'green'), Shape('circle', 'red')], 'to the left of')]
    positions = torch.stack([torch.from_numpy(shape_word_positions(model.tokenizer, p, sc))
                             for p, sc in zip(prompts, scenes)])
    masks = torch.zeros(2, 2, 64, 64)
    masks[:, 0, :, :32] = 1.
    masks[:, 1, :, 32:] = 1.
    return dict(img=torch.rand(2, 3, 64, 64) * 2 - 1, prompt=prompts, grounding_tokens=positions,
                grounding_masks=masks)


def _training_attention(model, batch, seed):
    """The text attention records, token mask and timesteps of
    ``model.loss(batch)`` of two rows after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    torch.rand(2)  # the caption dropout's draw
    tokens, mask = model.tokenizer(batch['prompt'])
    t = model.timestep_sampler(2, 1000, model.device)
    diffusion = model.diffusion_scheduler.train_diffusion
    x_t = diffusion.q_sample(batch['img'], t, model.train_noise(batch['img']))
    with recorded_text_attention(model.unet) as records:
        model.unet(x_t, t, tokens, mask)
    return records, mask, t


def _with_aux(monkeypatch, model, *losses):
    monkeypatch.setattr(model, 'aux_losses', nn.ModuleList(losses))


def test_loss_adds_the_grounding_loss_of_the_batchs_words(base_model, monkeypatch):
    """``TokenGroundingLoss`` adds ``loss_grounding``, its weight times the
    mean word loss over the text attention blocks, and leaves the other
    losses alone; rows whose prompt was dropped do not count."""
    batch = _grounding_batch(base_model)
    torch.manual_seed(3)
    plain = base_model.loss(batch)
    assert set(plain) == {'loss_mse', 'loss_vb'}
    _with_aux(monkeypatch, base_model, TokenGroundingLoss(2.))
    monkeypatch.setitem(base_model.train_cfg, 'caption_dropout', 0.)
    torch.manual_seed(3)
    grounded = base_model.loss(batch)
    torch.manual_seed(3)
    _with_aux(monkeypatch, base_model)
    same_draws = base_model.loss(batch)
    for key in ('loss_mse', 'loss_vb'):
        torch.testing.assert_close(grounded[key], same_draws[key])
    # the same number from the parts, on the same timesteps
    records, _, _ = _training_attention(base_model, batch, seed=3)
    assert records
    expected = torch.stack([token_grounding_loss(w, batch['grounding_tokens'], batch['grounding_masks'])[0].mean()
                            for _, w in records]).mean()
    torch.testing.assert_close(grounded['loss_grounding'], 2 * expected)
    assert 0.1 < expected < 1
    _with_aux(monkeypatch, base_model, TokenGroundingLoss(2.))
    monkeypatch.setitem(base_model.train_cfg, 'caption_dropout', 1.)
    assert base_model.loss(batch)['loss_grounding'] == 0
    _with_aux(monkeypatch, base_model, TokenGroundingLoss(2., sides=(64, )))
    with pytest.raises(ValueError, match=r'TokenGroundingLoss needs text attention blocks; the '
                                         r'UNet has none on feature maps of the sides \(64,\)'):
        base_model.loss(batch)
    del batch['grounding_masks']
    with pytest.raises(ValueError, match=r"TokenGroundingLoss needs 'grounding_masks' in the "
                                         r'batch, e.g. from the ShapeGroundingTargets dataset transform'):
        base_model.loss(batch)


def test_loss_adds_the_off_phrase_loss_of_the_batchs_boxes(base_model, monkeypatch):
    """``OffPhraseLoss`` adds ``loss_off_phrase``, its weight times the
    mean off-phrase loss over the text attention blocks, on the region of
    each shape's last word; the other losses stay; dropped rows do not count;
    the errors name what is missing."""
    batch = _grounding_batch(base_model)
    batch['grounding_masks'] = torch.stack([torch.zeros_like(batch['grounding_masks']),
                                            batch['grounding_masks']], dim=2)  # (B, S, W, R, R)
    monkeypatch.setitem(base_model.train_cfg, 'caption_dropout', 0.)
    torch.manual_seed(3)
    plain = base_model.loss(batch)
    _with_aux(monkeypatch, base_model, OffPhraseLoss(2.))
    torch.manual_seed(3)
    with_loss = base_model.loss(batch)
    assert set(with_loss) == {'loss_mse', 'loss_vb', 'loss_off_phrase'}
    for key in ('loss_mse', 'loss_vb'):
        torch.testing.assert_close(with_loss[key], plain[key])
    records, mask, _ = _training_attention(base_model, batch, seed=3)
    expected = torch.stack([off_phrase_attention_loss(w, batch['grounding_tokens'], batch['grounding_masks'][:, :, 1],
                                                      mask)[0].mean() for _, w in records]).mean()
    torch.testing.assert_close(with_loss['loss_off_phrase'], 2 * expected)
    assert 0.05 < expected < 0.95
    monkeypatch.setitem(base_model.train_cfg, 'caption_dropout', 1.)
    assert base_model.loss(batch)['loss_off_phrase'] == 0
    batch['grounding_masks'] = batch['grounding_masks'][:, :, 1]
    with pytest.raises(ValueError, match=r"OffPhraseLoss needs a region per word in "
                                         r"'grounding_masks' \(B, S, W, R, R\), e.g. ShapeGroundingTargets\("
                                         r"kind_region='box'\); got \(2, 2, 64, 64\)"):
        base_model.loss(batch)
    del batch['grounding_tokens']
    with pytest.raises(ValueError, match=r"OffPhraseLoss needs 'grounding_tokens' in the "
                                         r'batch, e.g. from the ShapeGroundingTargets dataset transform'):
        base_model.loss(batch)


def test_grounding_loss_counts_only_rows_up_to_its_max_timestep(base_model, monkeypatch):
    """``max_timestep`` leaves the rows drawn at later timesteps out of
    ``loss_grounding`` (and nothing else): the loss equals the mean over the
    rows kept, and is 0 when none is."""
    batch = _grounding_batch(base_model)
    monkeypatch.setitem(base_model.train_cfg, 'caption_dropout', 0.)
    records, mask, t = _training_attention(base_model, batch, seed=5)
    early = int(t.argmin())
    only_early = torch.zeros(2, dtype=torch.bool)
    only_early[early] = True
    loss = TokenGroundingLoss(1.)
    expected = loss(AuxLossInputs(batch, t, only_early, mask, records))
    both = loss(AuxLossInputs(batch, t, torch.ones(2, dtype=torch.bool), mask, records))
    assert t.min() < t.max() and not torch.isclose(expected, both)

    def loss_with(max_timestep):
        _with_aux(monkeypatch, base_model, TokenGroundingLoss(1., max_timestep=max_timestep))
        torch.manual_seed(5)
        return base_model.loss(batch)

    torch.testing.assert_close(loss_with(None)['loss_grounding'], both)
    torch.testing.assert_close(loss_with(int(t.max()))['loss_grounding'], both)
    between = loss_with(int(t.min()))
    torch.testing.assert_close(between['loss_grounding'], expected)
    torch.testing.assert_close(between['loss_mse'], loss_with(None)['loss_mse'])
    assert loss_with(int(t.min()) - 1)['loss_grounding'] == 0


def test_both_attention_losses_together_see_the_same_attention(base_model, monkeypatch):
    """Two losses that each record the text attention: each gets its own
    records of the one UNet call, equal to what either gets alone."""
    batch = _grounding_batch(base_model)
    batch['grounding_masks'] = torch.stack([batch['grounding_masks']] * 2, dim=2)  # (B, S, W, R, R)
    monkeypatch.setitem(base_model.train_cfg, 'caption_dropout', 0.)
    results = {}
    for name, losses in dict(both=(TokenGroundingLoss(1.), OffPhraseLoss(3.)), grounding=(TokenGroundingLoss(1.), ),
                             off_phrase=(OffPhraseLoss(3.), )).items():
        _with_aux(monkeypatch, base_model, *losses)
        torch.manual_seed(7)
        results[name] = base_model.loss(batch)
    torch.testing.assert_close(results['both']['loss_grounding'], results['grounding']['loss_grounding'])
    torch.testing.assert_close(results['both']['loss_off_phrase'], results['off_phrase']['loss_off_phrase'])
    assert all(type(p).__name__ == 'SDPAAttnProcessor' for p in base_model.unet.attn_processors.values())


def test_pixel_weights_add_the_kind_mask():
    from projects.glide.models import ForegroundPixelWeight
    x0 = torch.full((2, 3, 16, 16), -1.)
    x0[0, 0, 4:8, 4:8] = 1.  # a red-ish square on black; the second image is all black
    kind_mask = torch.zeros(2, 1, 16, 16)
    kind_mask[0, 0, 2:6, 2:6] = 1.  # overlaps the square's top-left quarter
    kind_mask[1, 0, 0, 0] = 0.5
    batch = dict(kind_mask=kind_mask)
    expected = torch.ones(2, 1, 16, 16)
    expected[0, 0, 2:6, 2:6] = 3.
    expected[1, 0, 0, 0] = 2.
    torch.testing.assert_close(pixel_weight([KindPixelWeight(2.)], x0, batch), expected)
    expected[0, 0, 4:8, 4:8] += 4.  # 7 where the mask and the square overlap, 5 on the rest
    torch.testing.assert_close(pixel_weight([KindPixelWeight(2.), ForegroundPixelWeight(4.)], x0, batch), expected)
    assert expected[0, 0, 4, 4] == 7. and expected[0, 0, 7, 7] == 5.
    with pytest.raises(ValueError, match=r"KindPixelWeight needs a 'kind_mask' \(B, 1, H, W\) in "
                                         r'the batch, e.g. from the KindMask dataset transform'):
        KindPixelWeight(2.)(x0, {})
    with pytest.raises(ValueError, match=r'kind_mask must be \(2, 1, 16, 16\) \(B, 1, H, W\) like '
                                         r'the images, got \(2, 16, 16\)'):
        KindPixelWeight(2.)(x0, dict(kind_mask=kind_mask[:, 0]))


def test_loss_weights_the_kind_mask_from_the_batch(base_model, monkeypatch):
    """``loss`` passes the batch to the pixel weights: weight k on a kind
    mask over a quarter of the pixels grows the eps MSE by about k / 4."""
    kind_mask = torch.zeros(2, 1, 64, 64)
    kind_mask[..., :32, :32] = 1.
    batch = dict(img=torch.full((2, 3, 64, 64), -1.), prompt=['a', 'b'], kind_mask=kind_mask)
    monkeypatch.setitem(base_model.train_cfg, 'caption_dropout', 0.)
    torch.manual_seed(3)
    plain = base_model.loss(batch)
    monkeypatch.setattr(base_model, 'pixel_weights', [KindPixelWeight(4.)])
    torch.manual_seed(3)
    weighted = base_model.loss(batch)
    torch.testing.assert_close(weighted['loss_vb'], plain['loss_vb'])
    assert 1.7 < (weighted['loss_mse'] / plain['loss_mse']).item() < 2.3


def _tiny_glide(train_cfg):
    from projects.glide.models import Glide
    unet = dict(type='Text2ImUNet', image_size=8, base_channels=32, channel_mult=(1, ),
                resblocks_per_downsample=1, attention_res=(), num_head_channels=32, text_ctx=4,
                xf_width=32, xf_layers=1, xf_heads=1)
    return Glide(unet=unet, diffusion_scheduler=dict(type='GlideDDIMScheduler'),
                 tokenizer=dict(type='GlideTokenizer', text_ctx=4), train_cfg=train_cfg)


@pytest.mark.parametrize('train_cfg, message', [
    (dict(pixel_weights=[dict(type='KindPixelWeight', weight=-2)]), r'KindPixelWeight: weight must be >= 0, got -2'),
    (dict(aux_losses=[dict(type='TokenGroundingLoss', weight=-0.5)]),
     r'TokenGroundingLoss: weight must be >= 0, got -0.5'),
    (dict(aux_losses=[dict(type='OffPhraseLoss', weight=-1.)]), r'OffPhraseLoss: weight must be >= 0, got -1.0'),
    (dict(aux_losses=[dict(type='TokenGroundingLoss', weight=1., max_timestep=-1)]),
     r'TokenGroundingLoss: max_timestep must be None or an int >= 0, got -1'),
    (dict(aux_losses=[dict(type='TokenGroundingLoss', weight=1., max_timestep=700.)]),
     r'TokenGroundingLoss: max_timestep must be None or an int >= 0, got 700.0'),
    (dict(aux_losses=[dict(type='TokenGroundingLoss', weight=1.)] * 2),
     r"train_cfg.aux_losses must have distinct names, got \['grounding', 'grounding'\]"),
    (dict(kind_weight=5.), r"train_cfg.kind_weight is now a component: use "
                           r"pixel_weights=\[dict\(type='KindPixelWeight', weight=\.\.\.\), \.\.\.\]"),
    (dict(grounding_weight=1.), r"train_cfg.grounding_weight is now a component: use "
                                r"aux_losses=\[dict\(type='TokenGroundingLoss', weight=\.\.\., sides=\.\.\., "
                                r"max_timestep=\.\.\.\)\]"),
    (dict(grounding_sides=(16, )), r'train_cfg.grounding_sides is now a component: use TokenGroundingLoss\('
                                   r'sides=\.\.\.\) / OffPhraseLoss\(sides=\.\.\.\) in aux_losses'),
    (dict(grounding_max_timestep=700), r'train_cfg.grounding_max_timestep is now a component: use '
                                       r'TokenGroundingLoss\(max_timestep=\.\.\.\)'),
    (dict(off_phrase_weight=1.), r"train_cfg.off_phrase_weight is now a component: use "
                                 r"aux_losses=\[dict\(type='OffPhraseLoss', weight=\.\.\."),
])
def test_bad_research_train_cfg(train_cfg, message):
    with pytest.raises(ValueError, match=message):
        _tiny_glide(train_cfg)


def test_research_components_in_a_config():
    model = _tiny_glide(dict(pixel_weights=[dict(type='KindPixelWeight', weight=5.),
                                            dict(type='ForegroundPixelWeight', weight=4.)],
                             aux_losses=[dict(type='TokenGroundingLoss', weight=1., sides=(16, ), max_timestep=700),
                                         dict(type='OffPhraseLoss', weight=2., sides=[16])]))
    assert [(type(w).__name__, w.weight) for w in model.pixel_weights] == [('KindPixelWeight', 5.),
                                                                          ('ForegroundPixelWeight', 4.)]
    grounding, off_phrase = model.aux_losses
    assert (grounding.name, grounding.weight, grounding.sides, grounding.max_timestep) == ('grounding', 1., (16, ), 700)
    assert (off_phrase.name, off_phrase.weight, off_phrase.sides, off_phrase.max_timestep) == ('off_phrase', 2., (16, ),
                                                                                                 None)
