"""The UNets: precision, normalisation groups, attention blocks and their
processors, and the text transformer's local window."""
import pytest
import torch


@pytest.mark.parametrize('dtype,torch_dtype,tol', [('fp16', torch.float16, 1e-2),
                                                   ('bf16', torch.bfloat16, 3e-2)])
def test_half_precision_forward_close_to_fp32(converted, cases, dtype, torch_dtype, tol):
    """Half-precision UNet + text transformer agree with fp32 (relative L2).

    fp16 is within 1e-2. bf16 keeps 8 mantissa bits: on this random tiny
    model it lands at 2.1e-2 (autocast with fp32 weights gives the same
    2.0e-2), so its bound is 3e-2.
    """
    from mmagic.apis import init_model
    from mmengine import Config
    cfg = Config.fromfile(converted['text2im'][0])
    cfg.model.dtype = dtype
    model = init_model(cfg, converted['text2im'][1], device='cpu')
    assert model.unet.in_blocks[1][0].conv_1[2].weight.dtype == torch_dtype
    assert model.unet.in_blocks[1][0].conv_1[0].weight.dtype == torch.float32  # norms stay fp32
    case = cases['forward_base']
    with torch.no_grad():
        out = model.unet(case['x'], case['t'], case['tokens'], case['mask'])
    assert out.dtype == torch.float32
    rel = (out - case['out']).norm() / case['out'].norm()
    assert rel < tol



def _tiny_unet(**kwargs):
    from projects.glide.models import Text2ImUNet
    torch.manual_seed(0)
    size = dict(image_size=32, base_channels=32, channel_mult=(1, 2), resblocks_per_downsample=1,
                attention_res=(16, ), num_head_channels=32, text_ctx=8, xf_width=32, xf_layers=1, xf_heads=1)
    return Text2ImUNet(**dict(size, **kwargs)).eval()


def test_norm_groups_set_every_group_norm_and_are_checked(reference_model):
    from projects.glide.models.layers import FP32GroupNorm
    assert {m.num_groups for m in reference_model.unet.modules()
            if isinstance(m, FP32GroupNorm)} == {32}  # GLIDE's default
    unet = _tiny_unet(norm_groups=8)
    assert {m.num_groups for m in unet.modules() if isinstance(m, FP32GroupNorm)} == {8}
    with pytest.raises(ValueError, match=r'norm_groups=24 must divide the channels of every '
                                         r'GroupNorm, which are \[32, 64, 128\] here'):
        _tiny_unet(norm_groups=24)
    with pytest.raises(ValueError, match='norm_groups must be positive, got 0'):
        _tiny_unet(norm_groups=0)


def test_attention_position_embeddings_start_at_zero_and_only_where_asked():
    plain, placed = _tiny_unet(), _tiny_unet(attention_position=True)
    shapes = {k: tuple(v.shape) for k, v in placed.state_dict().items() if k.endswith('.position_embedding')}
    assert shapes == {'in_blocks.3.1.position_embedding': (64, 16, 16),
                      'mid_blocks.1.position_embedding': (64, 16, 16),
                      'out_blocks.0.1.position_embedding': (64, 16, 16),
                      'out_blocks.1.1.position_embedding': (64, 16, 16)}
    assert not any('.position_embedding' in k for k in plain.state_dict())
    assert all((v == 0).all() for k, v in placed.state_dict().items() if k in shapes)
    missing, unexpected = placed.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == sorted(shapes) and not unexpected
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t, tokens, mask = torch.tensor([900, 10]), torch.randint(0, 100, (2, 8)), torch.ones(2, 8, dtype=torch.bool)
    with torch.no_grad():  # zero embeddings: the same model as without them
        assert torch.equal(placed(x, t, tokens, mask), plain(x, t, tokens, mask))


def test_attention_position_lets_the_text_act_in_some_places_only():
    """Why the tiny base config sets ``attention_position``: on features that
    are the same everywhere (an image at high noise says nothing about the
    layout) plain attention can only add the same text message to every
    pixel; with a position embedding it can add it at some places only."""
    from projects.glide.models.unet import TextAttentionBlock
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 64, 1, 1, generator=gen).expand(1, 64, 16, 16)
    text = [torch.randn(1, 32, 5, generator=gen) for _ in range(2)]
    spreads = {}
    for side in (None, 16):
        torch.manual_seed(0)
        block = TextAttentionBlock(64, 32, encoder_channels=32, position_size=side)
        torch.nn.init.normal_(block.proj_out.weight, std=0.1)  # zero in GLIDE
        if side:
            torch.nn.init.normal_(block.position_embedding, generator=gen)
        with torch.no_grad():
            change = block(x, text[0]) - block(x, text[1])  # what the text adds, per pixel
        spreads[side] = (change.std(dim=(2, 3)).max().item(), change.abs().max().item())
    assert spreads[None][0] < 1e-5 * spreads[None][1]
    assert spreads[16][0] > 0.1 * spreads[16][1]
    with pytest.raises(ValueError, match=r'this attention block has a position embedding for '
                                         r'\(16, 16\) features, got \(8, 8\)'):
        block(torch.zeros(1, 64, 8, 8), text[0])


def test_attention_weights_are_what_the_block_mixes_its_values_with():
    """``TextAttentionBlock.attention_weights``: per pixel a softmax over the
    text positions then the pixels, and the block's output is the values
    mixed with exactly those weights."""
    from projects.glide.models.unet import TextAttentionBlock
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    block = TextAttentionBlock(64, 32, encoder_channels=24, position_size=8)
    torch.nn.init.normal_(block.proj_out.weight, std=0.1)
    torch.nn.init.normal_(block.position_embedding, generator=gen)
    x, text = torch.randn(2, 64, 8, 8, generator=gen), torch.randn(2, 24, 5, generator=gen)
    with torch.no_grad():
        weights = block.attention_weights(x, text)
        assert weights.shape == (2, 2, 64, 5 + 64) and weights.dtype == torch.float32
        assert torch.allclose(weights.sum(-1), torch.ones(2, 2, 64))
        _, _, v = block.queries_keys_values(x, text)
        mixed = (weights @ v).transpose(2, 3).reshape(2, 64, 64)
        assert torch.allclose(x + block.proj_out(mixed).reshape(2, 64, 8, 8), block(x, text), atol=1e-5)
        # without text the softmax runs over the pixels alone
        plain = TextAttentionBlock(64, 32)
        assert plain.attention_weights(x, None).shape == (2, 2, 64, 64)


def test_attention_processors_default_to_sdpa_and_can_be_swapped():
    """Each text attention block computes its output with its ``processor``
    (``SDPAAttnProcessor``); the UNet lists the blocks and their processors
    by module path and swaps them for all blocks or per block."""
    from projects.glide.models.attention import SDPAAttnProcessor, TextAttentionBlock
    unet = _tiny_unet()
    blocks = unet.text_attention_blocks()
    assert list(blocks) == ['in_blocks.3.1', 'mid_blocks.1', 'out_blocks.0.1', 'out_blocks.1.1']
    assert all(isinstance(b, TextAttentionBlock) for b in blocks.values())
    default = unet.attn_processors
    assert list(default) == list(blocks) and all(type(p) is SDPAAttnProcessor for p in default.values())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t, tokens, mask = torch.tensor([900, 10]), torch.randint(0, 100, (2, 8)), torch.ones(2, 8, dtype=torch.bool)
    for block in blocks.values():  # make the attention count (GLIDE starts proj_out at zero)
        torch.nn.init.normal_(block.proj_out.weight, std=0.1)
    with torch.no_grad():
        expected = unet(x, t, tokens, mask)
    calls = []

    def counting(block, x, text_states):
        calls.append((x.shape[-1], text_states.shape))
        return SDPAAttnProcessor()(block, x, text_states)

    unet.set_attn_processor(counting)
    with torch.no_grad():
        assert torch.equal(unet(x, t, tokens, mask), expected)
    assert calls == [(16, (2, 32, 8))] * 4
    unet.set_attn_processor({**default, 'mid_blocks.1': lambda block, x, text_states: x})  # skip one block
    assert unet.attn_processors['in_blocks.3.1'] is default['in_blocks.3.1']
    with torch.no_grad():
        assert (unet(x, t, tokens, mask) - expected).abs().max() > 1e-4
    with pytest.raises(ValueError, match=r"set_attn_processor needs one processor per text attention block: "
                                         r"missing \['in_blocks.3.1', 'out_blocks.0.1', 'out_blocks.1.1'\], "
                                         r"unknown \['mid_blocks.9'\]"):
        unet.set_attn_processor({'mid_blocks.1': counting, 'mid_blocks.9': counting})
    unet.set_attn_processor(default)
    with torch.no_grad():
        assert torch.equal(unet(x, t, tokens, mask), expected)
    assert not any('processor' in k for k in unet.state_dict())  # processors hold no weights


def test_a_processor_can_mix_the_values_itself():
    """What a recording or routing processor builds on: ``queries_keys_values``,
    ``weights_from`` and ``project_out`` give the block's output."""
    from projects.glide.models.attention import TextAttentionBlock
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    block = TextAttentionBlock(64, 32, encoder_channels=24)
    torch.nn.init.normal_(block.proj_out.weight, std=0.1)
    x, text = torch.randn(2, 64, 8, 8, generator=gen), torch.randn(2, 24, 5, generator=gen)

    def explicit(block, x, text_states):
        q, k, v = block.queries_keys_values(x, text_states)
        return block.project_out(x, block.weights_from(q, k) @ v)

    with torch.no_grad():
        expected = block(x, text)
        block.processor = explicit
        torch.testing.assert_close(block(x, text), expected, atol=1e-5, rtol=0)


def test_local_attention_mask_keeps_caption_tokens_near_and_padding_global():
    from projects.glide.models.text_transformer import local_attention_mask
    token_mask = torch.tensor([[True, True, True, True, False, False],
                               [False] * 6])  # a caption of 4 tokens; an empty one
    allowed = local_attention_mask(token_mask, 1)
    assert allowed.shape == (2, 1, 6, 6) and allowed.dtype == torch.bool
    expected = torch.tensor([[1, 1, 0, 0, 0, 0],
                             [1, 1, 1, 0, 0, 0],
                             [0, 1, 1, 1, 0, 0],
                             [0, 0, 1, 1, 0, 0],
                             [1, 1, 1, 1, 1, 1],
                             [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(allowed[0, 0], expected)
    assert allowed[1].all()  # no caption tokens: every position sees every position
    assert torch.equal(local_attention_mask(token_mask, 0)[0, 0, :4, :4], torch.eye(4, dtype=torch.bool))


def test_local_text_window_hides_far_words_from_caption_tokens():
    """With ``xf_local_window=1`` and two text blocks a caption token's state
    depends on the tokens at most two positions away and on nothing else;
    the padding positions and the pooled feature still depend on all."""
    tokens = torch.tensor([[10, 11, 12, 13, 14, 15, 0, 0]])
    other = tokens.clone()
    other[0, 0] = 99  # change the first word
    mask = torch.tensor([[True] * 6 + [False] * 2])
    changed = {}
    for window in (None, 1):
        unet = _tiny_unet(xf_layers=2, xf_local_window=window)
        with torch.no_grad():
            a, b = unet.encode_text(tokens, mask), unet.encode_text(other, mask)
        changed[window] = (a['xf_out'] - b['xf_out']).abs().amax(dim=1)[0]  # (T,)
        assert (a['xf_proj'] - b['xf_proj']).abs().max() > 1e-3
    assert (changed[None] > 1e-3).all()
    assert (changed[1][:3] > 1e-3).all() and (changed[1][3:6] == 0).all() and (changed[1][6:] > 1e-3).all()
    with pytest.raises(ValueError, match='a text transformer with a local_window needs the token mask'):
        _tiny_unet(xf_local_window=1, xf_padding=False).encode_text(tokens, None)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match=f'local_window must be None or an int >= 0, got {bad!r}'):
            _tiny_unet(xf_local_window=bad)


def test_one_channel_per_group_blocks_global_colour_shifts():
    """Why the tiny configs use 8 groups: with one channel per group the
    output head normalises away each channel's spatial mean, so the text
    (here: a large change of the pooled text feature) barely moves the
    image-wide mean of eps, the quantity that sets the overall colour at
    high noise; with 4 channels per group it moves it freely."""
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([950])
    tokens = torch.zeros(1, 8, dtype=torch.long)
    shifts = {}
    for groups in (32, 8):
        unet = _tiny_unet(norm_groups=groups)
        for p in unet.out.conv.parameters():  # GLIDE zero-initialises the head
            torch.nn.init.normal_(p, std=0.1)
        emb = unet.encode_text(tokens, torch.ones(1, 8, dtype=torch.bool))
        other = dict(emb, xf_proj=emb['xf_proj'] + 3 * torch.randn(emb['xf_proj'].shape,
                                                                   generator=torch.Generator().manual_seed(1)))
        with torch.no_grad():
            a, b = unet(x, t, text_emb=emb)[:, :3], unet(x, t, text_emb=other)[:, :3]
        shifts[groups] = ((a - b).mean((2, 3)).abs().max().item(), (a - b).abs().max().item())
    assert shifts[32][0] < 0.02 * shifts[32][1]  # pixels move, their mean hardly does
    assert shifts[8][0] > 10 * shifts[32][0]
