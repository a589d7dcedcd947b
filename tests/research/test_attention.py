"""Recording a UNet's text attention through its attention processors."""
import torch

from projects.glide.research.attention import RecordingAttnProcessor, recorded_text_attention


def _tiny_unet():
    from projects.glide.models import Text2ImUNet
    torch.manual_seed(0)
    return Text2ImUNet(image_size=32, base_channels=32, channel_mult=(1, 2), resblocks_per_downsample=1,
                       attention_res=(16, ), num_head_channels=32, text_ctx=8, xf_width=32, xf_layers=1,
                       xf_heads=1)


def test_recorder_gives_every_text_attention_block_with_gradients_and_then_lets_go():
    unet = _tiny_unet()
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([900, 10])
    tokens, mask = torch.randint(0, 100, (2, 8)), torch.ones(2, 8, dtype=torch.bool)
    before = unet.attn_processors
    with torch.no_grad():
        plain = unet(x, t, tokens, mask)
    with recorded_text_attention(unet) as records:
        out = unet(x, t, tokens, mask)
        assert all(isinstance(p, RecordingAttnProcessor) for p in unet.attn_processors.values())
    assert torch.equal(out, plain)  # recording changes nothing
    # attention at 16x16: after the downsample, in the middle and on the way up
    assert [side for side, _ in records] == [16, 16, 16, 16]
    for _, weights in records:
        assert weights.shape == (2, 2, 256, 8 + 256) and weights.requires_grad
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 256))
    records[0][1][..., :8].sum().backward()
    assert unet.transformer.resblocks[0].attn.c_qkv.weight.grad.abs().sum() > 0
    unet(x, t, tokens, mask)
    assert len(records) == 4  # the recording processors are gone
    assert unet.attn_processors == before  # the blocks' own processors are back
    with recorded_text_attention(unet, sides=(8, 32)) as records:
        unet(x, t, tokens, mask)
    assert records == []  # no text attention on those sides


def test_recorders_nest_and_wrap_the_processor_in_place():
    """A recorder wraps whatever processor a block has, so two recordings
    (e.g. two losses) nest, each with its own records, and a changed
    processor's output is what the UNet gets."""
    unet = _tiny_unet()
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([500])
    tokens, mask = torch.randint(0, 100, (1, 8)), torch.ones(1, 8, dtype=torch.bool)
    with torch.no_grad(), recorded_text_attention(unet, sides=(16, )) as outer:
        with recorded_text_attention(unet) as inner:
            unet(x, t, tokens, mask)
        unet(x, t, tokens, mask)
    assert len(inner) == 4 and len(outer) == 8
    for (_, a), (_, b) in zip(inner, outer[:4]):
        assert torch.equal(a, b)
    calls = []

    def skip_attention(block, x, text_states):
        calls.append(x.shape)
        return x

    unet.set_attn_processor(skip_attention)
    with torch.no_grad(), recorded_text_attention(unet) as records:
        skipped = unet(x, t, tokens, mask)
    assert len(calls) == 4 and len(records) == 4
    unet.set_attn_processor(skip_attention)
    with torch.no_grad():
        assert torch.equal(unet(x, t, tokens, mask), skipped)
