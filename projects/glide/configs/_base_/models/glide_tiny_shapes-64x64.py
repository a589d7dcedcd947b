# A tiny GLIDE base model (the full-size classes at a small width) for the 64x64 shapes world, with its training terms.
text_ctx = 32  # shapes captions are < 20 BPE tokens
model = dict(
    type='Glide',
    unet=dict(
        type='Text2ImUNet',
        image_size=64,
        base_channels=32,
        channel_mult=(1, 2, 3),
        resblocks_per_downsample=2,
        # text attention at 32x32 too: at 16x16 a small shape is 4 pixels wide, too coarse to draw its kind
        attention_res=(16, 32),
        num_head_channels=32,
        dropout=0.0,
        text_ctx=text_ctx,
        xf_width=48,
        xf_layers=2,
        xf_heads=2,
        # 4 channels per group at 32 channels: with one channel per group the output could not shift the colour
        norm_groups=8,
        # learned position embeddings in the attention blocks (not in GLIDE): the text can say where a shape goes
        attention_position=True),
    diffusion_scheduler=dict(
        type='GlideDDIMScheduler', num_train_timesteps=1000, beta_schedule='squaredcos_cap_v2'),
    tokenizer=dict(type='GlideTokenizer', text_ctx=text_ctx),
    # flat colours give themselves away in x_t at all but high noise, where the text must decide them: more
    # high-noise timesteps, an x0-like MSE weight where SNR < 1, offset and coarse noise to hide the colours and
    # blobs, shape pixels weighed 1 + 4 (components: models/training.py; why: docs/research/base-model-history.md)
    train_cfg=dict(stage='base', caption_dropout=0.2,
                   timestep_sampler=dict(type='HighNoiseTimestepSampler', prob=0.25, start=850),
                   noise=dict(type='TrainingNoise', offset=0.15, coarse=0.3),
                   mse_weight=dict(type='TruncatedSNRWeight', max_weight=1000.),
                   pixel_weights=[dict(type='ForegroundPixelWeight', weight=4.)]),
    # the default sampler of this model: DDIM, 25 steps (docs/model_card.md scores use it)
    test_cfg=dict(guidance_scale=3., num_inference_steps=25))
