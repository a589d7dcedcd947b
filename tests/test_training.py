"""Training: the components of ``train_cfg`` (timestep samplers, training
noise, loss weights, auxiliary losses) and ``Glide.loss``."""
import pytest
import torch
from torch import nn


@pytest.fixture(scope='module')
def base_model(reference_model):
    """The tiny reference cascade with its upsampler detached (base stage only)."""
    import copy
    model = copy.deepcopy(reference_model)
    model.unet_up = model.diffusion_scheduler_up = None
    return model


def tiny_glide(train_cfg):
    from projects.glide.models import Glide
    unet = dict(type='Text2ImUNet', image_size=8, base_channels=32, channel_mult=(1, ),
                resblocks_per_downsample=1, attention_res=(), num_head_channels=32, text_ctx=4,
                xf_width=32, xf_layers=1, xf_heads=1)
    return Glide(unet=unet, diffusion_scheduler=dict(type='GlideDDIMScheduler'),
                 tokenizer=dict(type='GlideTokenizer', text_ctx=4), train_cfg=train_cfg)


def test_train_timesteps_uniform_or_focused_on_high_noise(base_model):
    from projects.glide.models import HighNoiseTimestepSampler, UniformTimestepSampler
    assert type(base_model.timestep_sampler) is UniformTimestepSampler  # GLIDE default
    torch.manual_seed(0)
    uniform = base_model.timestep_sampler(20000, 1000, 'cpu')
    assert uniform.dtype == torch.long and uniform.min() >= 0 and uniform.max() <= 999
    assert abs((uniform >= 850).float().mean().item() - 0.15) < 0.02
    focused = HighNoiseTimestepSampler(prob=0.5, start=850)(20000, 1000, 'cpu')
    assert abs((focused >= 850).float().mean().item() - (0.5 + 0.5 * 0.15)) < 0.02
    assert focused.min() < 100 and focused.max() == 999
    assert HighNoiseTimestepSampler(prob=1., start=850)(5000, 1000, 'cpu').min() >= 850


def test_high_noise_sampler_draws_like_the_uniform_one_first():
    """The same draws in the same order: uniform timesteps, then the high
    ones, then the coin per row (so a seeded run does not change)."""
    from projects.glide.models import HighNoiseTimestepSampler
    torch.manual_seed(4)
    focused = HighNoiseTimestepSampler(prob=0.3, start=600)(64, 1000, 'cpu')
    torch.manual_seed(4)
    t, high, coin = torch.randint(0, 1000, (64, )), torch.randint(600, 1000, (64, )), torch.rand(64)
    assert torch.equal(focused, torch.where(coin < 0.3, high, t))


@pytest.mark.parametrize('train_cfg, message', [
    (dict(timestep_sampler=dict(type='HighNoiseTimestepSampler', prob=1.5, start=900)),
     r'HighNoiseTimestepSampler: prob must be in \[0, 1\], got 1.5'),
    (dict(timestep_sampler=dict(type='HighNoiseTimestepSampler', prob=0.5, start=-1)),
     r'HighNoiseTimestepSampler: start must be an int >= 0, got -1'),
    (dict(noise=dict(type='TrainingNoise', offset=-0.1)), r'TrainingNoise: offset must be >= 0, got -0.1'),
    (dict(pixel_weights=[dict(type='ForegroundPixelWeight', weight=-1)]),
     r'ForegroundPixelWeight: weight must be >= 0, got -1'),
    (dict(noise=dict(type='TrainingNoise', coarse=-0.2)), r'TrainingNoise: coarse must be >= 0, got -0.2'),
    (dict(noise=dict(type='TrainingNoise', coarse_grid=0)),
     r'TrainingNoise: coarse_grid must be an int >= 1, got 0'),
    (dict(noise=dict(type='TrainingNoise', coarse_grid=2.5)),
     r'TrainingNoise: coarse_grid must be an int >= 1, got 2.5'),
    (dict(mse_weight=dict(type='TruncatedSNRWeight', max_weight=0.5)),
     r'TruncatedSNRWeight: max_weight must be >= 1, got 0.5'),
    (dict(timestep_sampler=dict(type='HighNoiseTimestepSampler', prob=0.5, start=1000)),
     r'HighNoiseTimestepSampler: start must be in \[0, 1000\), got 1000'),
    (dict(caption_dropout=1.5), r'train_cfg: caption_dropout must be in \[0, 1\], got 1.5'),
    (dict(stage='upsampler'), r"train_cfg.stage='upsampler' but the model has no unet_up"),
    (dict(stage='refiner'), r"train_cfg.stage must be 'base' or 'upsampler', got 'refiner'"),
    (dict(high_noise_prob=0.5), r"train_cfg.high_noise_prob is now a component: use "
                                r"timestep_sampler=dict\(type='HighNoiseTimestepSampler', prob=\.\.\., "
                                r"start=\.\.\.\)"),
    (dict(high_noise_from=900), r"train_cfg.high_noise_from is now a component: use timestep_sampler="),
    (dict(offset_noise=0.1), r"train_cfg.offset_noise is now a component: use "
                             r"noise=dict\(type='TrainingNoise', offset=\.\.\.\)"),
    (dict(coarse_noise=0.1), r"train_cfg.coarse_noise is now a component: use "
                             r"noise=dict\(type='TrainingNoise', coarse=\.\.\., coarse_grid=\.\.\.\)"),
    (dict(coarse_noise_grid=2), r"train_cfg.coarse_noise_grid is now a component: use noise="),
    (dict(max_mse_weight=10.), r"train_cfg.max_mse_weight is now a component: use "
                               r"mse_weight=dict\(type='TruncatedSNRWeight', max_weight=\.\.\.\)"),
    (dict(foreground_weight=4.), r"train_cfg.foreground_weight is now a component: use "
                                 r"pixel_weights=\[dict\(type='ForegroundPixelWeight', weight=\.\.\.\)\]"),
    (dict(lr=1.), r"unknown train_cfg key 'lr'; allowed: \['aux_losses', 'caption_dropout', 'mse_weight', "
                  r"'noise', 'pixel_weights', 'stage', 'timestep_sampler'\]"),
])
def test_bad_train_cfg(train_cfg, message):
    with pytest.raises(ValueError, match=message):
        tiny_glide(train_cfg)


@pytest.mark.parametrize('train_cfg, message', [
    (dict(timestep_sampler=dict(type='TrainingNoise')),
     r"train_cfg.timestep_sampler must build TimestepSampler components, got \['TrainingNoise'\]"),
    (dict(pixel_weights=[dict(type='TruncatedSNRWeight', max_weight=2.)]),
     r"train_cfg.pixel_weights must build PixelWeight components, got \['TruncatedSNRWeight'\]"),
    (dict(aux_losses=[dict(type='ForegroundPixelWeight', weight=1.)]),
     r"train_cfg.aux_losses must build AuxiliaryLoss components, got \['ForegroundPixelWeight'\]"),
    (dict(noise=3), r'train_cfg.noise must build a callable, got int'),
])
def test_train_cfg_components_of_the_wrong_kind(train_cfg, message):
    with pytest.raises(TypeError, match=message):
        tiny_glide(train_cfg)


def test_train_cfg_builds_components_and_keeps_the_plain_settings():
    from projects.glide.models import (
        ForegroundPixelWeight,
        HighNoiseTimestepSampler,
        TrainingNoise,
        TruncatedSNRWeight,
        UniformTimestepSampler,
    )
    plain = tiny_glide(None)
    assert plain.train_cfg == dict(stage='base', caption_dropout=0.2)
    assert type(plain.timestep_sampler) is UniformTimestepSampler and plain.mse_weight is None
    assert (plain.train_noise.offset, plain.train_noise.coarse) == (0., 0.)
    assert plain.pixel_weights == [] and len(plain.aux_losses) == 0
    noise = TrainingNoise(offset=0.2)
    model = tiny_glide(dict(caption_dropout=0., noise=noise,
                            timestep_sampler=dict(type='HighNoiseTimestepSampler', prob=0.25, start=850),
                            mse_weight=dict(type='TruncatedSNRWeight', max_weight=1000.),
                            pixel_weights=[dict(type='ForegroundPixelWeight', weight=4.)]))
    assert model.train_noise is noise  # built components are taken as they are
    assert isinstance(model.timestep_sampler, HighNoiseTimestepSampler) and model.timestep_sampler.start == 850
    assert isinstance(model.mse_weight, TruncatedSNRWeight) and model.mse_weight.max_weight == 1000.
    assert [type(w) for w in model.pixel_weights] == [ForegroundPixelWeight]
    assert set(model.state_dict()) == set(plain.state_dict())  # no weights of their own


def test_train_noise_white_or_with_per_channel_offset(base_model):
    from projects.glide.models import TrainingNoise
    x0 = torch.zeros(64, 3, 16, 16)
    torch.manual_seed(0)
    white = torch.randn_like(x0)
    torch.manual_seed(0)
    assert torch.equal(base_model.train_noise(x0), white)  # GLIDE default
    torch.manual_seed(0)
    offset = TrainingNoise(offset=0.5)(x0) - white  # same white draw first, then the offsets
    assert offset.shape == x0.shape
    # one constant per image and channel, standard deviation 0.5 over the 192 of them
    torch.testing.assert_close(offset, offset[:, :, :1, :1].expand_as(offset))
    assert 0.4 < offset[:, :, 0, 0].std().item() < 0.6
    assert len(offset[:, :, 0, 0].unique()) == 64 * 3


def test_train_noise_coarse_grid_is_smooth_and_per_image():
    from projects.glide.models import TrainingNoise
    x0 = torch.zeros(256, 3, 16, 16)
    torch.manual_seed(0)
    white = torch.randn_like(x0)
    torch.manual_seed(0)
    coarse = TrainingNoise(coarse=0.5, coarse_grid=2)(x0) - white  # same white draw first, then the grid
    assert coarse.shape == x0.shape
    # bilinear from 2x2: each 8x8 quarter's inner 4x4 corner block is its grid node's value
    torch.testing.assert_close(coarse[..., :4, :4], coarse[..., :1, :1].expand(-1, -1, 4, 4))
    torch.testing.assert_close(coarse[..., 12:, 12:], coarse[..., -1:, -1:].expand(-1, -1, 4, 4))
    nodes = torch.stack([coarse[..., 0, 0], coarse[..., 0, -1], coarse[..., -1, 0],
                         coarse[..., -1, -1]])
    assert 0.45 < nodes.std().item() < 0.55  # the grid nodes are N(0, 0.5^2)
    assert abs(torch.corrcoef(nodes.flatten(1))[0, 3].item()) < 0.1  # drawn independently
    # smooth in between: neighbouring pixels differ by at most a quarter of the node step
    step = (nodes[1] - nodes[0]).abs()
    assert ((coarse[..., 0, 1:] - coarse[..., 0, :-1]).abs().amax(-1) <= step / 4 + 1e-6).all()


def test_pixel_weights_mark_the_foreground(base_model):
    from projects.glide.models import ForegroundPixelWeight
    from projects.glide.models.training import pixel_weight
    x0 = torch.full((2, 3, 16, 16), -1.)
    x0[0, 0, 4:8, 4:8] = 1.  # a red-ish square on black
    x0[1] = 1.
    x0[1, :, 10:, 0:6] = 0.5  # a grey block touching the border of a white image
    assert pixel_weight(base_model.pixel_weights, x0, {}) is None  # GLIDE default
    weights = pixel_weight([ForegroundPixelWeight(4.)], x0, {})
    assert weights.shape == (2, 1, 16, 16)
    expected = torch.ones(2, 1, 16, 16)
    expected[0, 0, 4:8, 4:8] = 5.
    expected[1, 0, 10:, 0:6] = 5.
    torch.testing.assert_close(weights, expected)


def test_mse_weights_truncated_snr(base_model):
    from projects.glide.models import TruncatedSNRWeight
    abar = torch.tensor([0.9, 0.5, 0.2, 1e-4, 0.2], dtype=torch.float64)
    inverse_snr = ((1 - abar) / abar).float()
    assert base_model.mse_weight is None  # GLIDE default: the eps MSE unweighted
    # 1/SNR = (1 - abar) / abar: 0.11 -> 1, 1 -> 1, 4 -> 4, 9999 -> capped at 100
    torch.testing.assert_close(TruncatedSNRWeight(100.)(inverse_snr), torch.tensor([1., 1., 4., 100., 4.]))


def plain_and_weighted_mse(model, monkeypatch, batch, attribute, value):
    """The eps MSE of one draw of timesteps/noise without and with the
    model's component ``attribute`` set to ``value``; the vb term must not change."""
    monkeypatch.setitem(model.train_cfg, 'caption_dropout', 0.)
    torch.manual_seed(3)
    plain = model.loss(batch)
    monkeypatch.setattr(model, attribute, value)
    torch.manual_seed(3)
    weighted = model.loss(batch)
    torch.testing.assert_close(weighted['loss_vb'], plain['loss_vb'])
    return plain['loss_mse'], weighted['loss_mse']


def test_loss_applies_mse_weights(base_model, monkeypatch):
    """The eps MSE grows once the high-noise rows are weighted."""
    from projects.glide.models import HighNoiseTimestepSampler, TruncatedSNRWeight
    batch = dict(img=torch.rand(4, 3, 64, 64) * 2 - 1, prompt=['a', 'b', 'c', 'd'])
    monkeypatch.setattr(base_model, 'timestep_sampler', HighNoiseTimestepSampler(1., 900))  # all rows at t >= 900
    plain, weighted = plain_and_weighted_mse(base_model, monkeypatch, batch, 'mse_weight', TruncatedSNRWeight(50.))
    # 1/SNR > 41 for every t >= 900 on the cosine schedule
    assert weighted > 40 * plain


def test_loss_applies_pixel_weights(base_model, monkeypatch):
    """With weight w on the foreground, the eps MSE grows by about w times
    the foreground's share of the pixels."""
    from projects.glide.models import ForegroundPixelWeight
    x0 = torch.full((2, 3, 64, 64), -1.)
    x0[:, 2, 20:40, 20:40] = 1.
    batch = dict(img=x0, prompt=['a', 'b'])
    plain, weighted = plain_and_weighted_mse(base_model, monkeypatch, batch, 'pixel_weights',
                                             [ForegroundPixelWeight(3.)])
    # 400 of 4096 pixels weigh 4: about 1 + 3 * 400 / 4096 when errors are spread evenly
    assert 1.15 < (weighted / plain).item() < 1.45


def test_loss_is_the_components_in_order(base_model, monkeypatch):
    """``loss`` = caption dropout draw, timesteps, noise, q_sample, UNet,
    hybrid loss with the weights, then each auxiliary loss with what its
    ``watch`` saw: the same numbers from the parts, in the same RNG order."""
    from projects.glide.models import (
        AuxiliaryLoss,
        ForegroundPixelWeight,
        HighNoiseTimestepSampler,
        TrainingNoise,
        TruncatedSNRWeight,
    )

    class Peek(AuxiliaryLoss):
        """Records what it was given; returns the kept rows' mean timestep."""

        def __init__(self):
            super().__init__(weight=0.5, name='peek')

        def watch(self, unet):
            return torch.no_grad()  # entered around the UNet call: grad off inside, yields None

        def forward(self, inputs):
            self.inputs = inputs
            return inputs.t[inputs.keep].float().mean()

    peek = Peek()
    for name, value in dict(timestep_sampler=HighNoiseTimestepSampler(0.5, 700),
                            train_noise=TrainingNoise(offset=0.1, coarse=0.2),
                            mse_weight=TruncatedSNRWeight(20.), pixel_weights=[ForegroundPixelWeight(2.)],
                            aux_losses=nn.ModuleList([peek])).items():
        monkeypatch.setattr(base_model, name, value)
    monkeypatch.setitem(base_model.train_cfg, 'caption_dropout', 0.5)
    gen = torch.Generator().manual_seed(0)
    batch = dict(img=torch.rand(6, 3, 64, 64, generator=gen) * 2 - 1, prompt=list('abcdef'))
    torch.manual_seed(11)
    got = base_model.loss(batch)
    torch.manual_seed(11)
    drop = torch.rand(6) < 0.5
    t = base_model.timestep_sampler(6, 1000, 'cpu')
    noise = base_model.train_noise(batch['img'])
    diffusion = base_model.diffusion_scheduler.train_diffusion
    x_t = diffusion.q_sample(batch['img'], t, noise)
    tokens, mask = base_model.tokenizer(['' if d else p for p, d in zip(batch['prompt'], drop.tolist())])
    out = base_model.unet(x_t, t, tokens, mask).float()
    weights = 1 + ForegroundPixelWeight(2.)(batch['img'], batch)
    losses = diffusion.training_losses(out, batch['img'], x_t, t, noise, pixel_weights=weights)
    mse = losses['mse'] * TruncatedSNRWeight(20.)(diffusion.inverse_snr(t, 6))
    assert set(got) == {'loss_mse', 'loss_vb', 'loss_peek'}
    assert torch.equal(got['loss_mse'], mse.mean()) and torch.equal(got['loss_vb'], losses['vb'].mean())
    assert 0 < drop.sum() < 6 and torch.equal(peek.inputs.keep, ~drop) and torch.equal(peek.inputs.t, t)
    assert torch.equal(peek.inputs.token_mask, mask) and peek.inputs.observed is None
    assert peek.inputs.batch is batch
    torch.testing.assert_close(got['loss_peek'], 0.5 * t[~drop].float().mean())
    assert not got['loss_mse'].requires_grad  # Peek.watch turned autograd off around the UNet call


@pytest.mark.parametrize('kwargs, message', [
    (dict(weight=-1., name='x'), r'AuxiliaryLoss: weight must be >= 0, got -1.0'),
    (dict(weight=1., name='bad name'), r"AuxiliaryLoss: name must be an identifier, got 'bad name'"),
])
def test_auxiliary_loss_arguments(kwargs, message):
    from projects.glide.models import AuxiliaryLoss
    with pytest.raises(ValueError, match=message):
        AuxiliaryLoss(**kwargs)
    with pytest.raises(NotImplementedError, match='AuxiliaryLoss must implement forward'):
        AuxiliaryLoss(1., 'x')(None)
