"""The text attention recorder and the word grounding loss."""
import pytest
import torch

from projects.glide.models.grounding import (off_phrase_attention_loss, recorded_text_attention,
                                             token_grounding_loss)


def _tiny_unet():
    from projects.glide.models import Text2ImUNet
    torch.manual_seed(0)
    return Text2ImUNet(image_size=32, base_channels=32, channel_mult=(1, 2), resblocks_per_downsample=1,
                       attention_res=(16, ), num_head_channels=32, text_ctx=8, xf_width=32, xf_layers=1,
                       xf_heads=1)


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


def test_recorder_gives_every_text_attention_block_with_gradients_and_then_lets_go():
    unet = _tiny_unet()
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([900, 10])
    tokens, mask = torch.randint(0, 100, (2, 8)), torch.ones(2, 8, dtype=torch.bool)
    with recorded_text_attention(unet) as records:
        unet(x, t, tokens, mask)
    # attention at 16x16: after the downsample, in the middle and on the way up
    assert [side for side, _ in records] == [16, 16, 16, 16]
    for _, weights in records:
        assert weights.shape == (2, 2, 256, 8 + 256) and weights.requires_grad
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 256))
    records[0][1][..., :8].sum().backward()
    assert unet.transformer.resblocks[0].attn.c_qkv.weight.grad.abs().sum() > 0
    unet(x, t, tokens, mask)
    assert len(records) == 4  # the hooks are gone
    with recorded_text_attention(unet, sides=(8, 32)) as records:
        unet(x, t, tokens, mask)
    assert records == []  # no text attention on those sides


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
