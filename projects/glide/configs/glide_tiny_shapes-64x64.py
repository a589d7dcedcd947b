# The bundled default model: a tiny GLIDE base model (same classes as the
# full-size one) trained on the procedurally drawn "shapes" world.
#   train: python tools/train.py projects/glide/configs/glide_tiny_shapes-64x64.py --amp
#   test:  python tools/test.py projects/glide/configs/glide_tiny_shapes-64x64.py \
#              projects/glide/weights/glide_tiny_shapes-64x64.pth
custom_imports = dict(imports=['projects.glide'], allow_failed_imports=False)
default_scope = 'mmagic'
randomness = dict(seed=0)

text_ctx = 32  # shapes captions are < 20 BPE tokens
model = dict(
    type='Glide',
    unet=dict(
        type='Text2ImUNet',
        image_size=64,
        base_channels=32,
        channel_mult=(1, 2, 3),
        resblocks_per_downsample=2,
        # text attention at 32x32 as well as 16x16: at 16x16 a small shape
        # is 4 pixels wide, too coarse to tie a kind of shape (circle,
        # square, triangle) to its shape; the finer levels saw the caption
        # only through the pooled text embedding (docs/research/binding-history.md)
        attention_res=(16, 32),
        num_head_channels=32,
        dropout=0.0,
        text_ctx=text_ctx,
        xf_width=48,
        xf_layers=2,
        xf_heads=2,
        # 4 channels per group at the 32-channel level: with GLIDE's 32 groups
        # (one channel each) the output head could not shift the overall colour
        norm_groups=8,
        # learned position embeddings in the attention blocks (not in GLIDE):
        # with them the text can say where a shape goes
        # (docs/research/base-model-history.md)
        attention_position=True),
    diffusion_scheduler=dict(
        type='GlideDDIMScheduler', num_train_timesteps=1000, beta_schedule='squaredcos_cap_v2'),
    tokenizer=dict(type='GlideTokenizer', text_ctx=text_ctx),
    # Flat-colour images give their colours and layout away in x_t at all but
    # the noisiest timesteps, where the text must decide them: draw a quarter
    # of the training timesteps from the noisiest 15% and weight the eps MSE
    # like an x0 MSE where SNR < 1. Offset noise hides the overall colour in
    # x_t at high noise, and coarse noise (a bilinearly upsampled 4x4 grid of
    # normal draws) hides shape-sized blobs, so the prompt has to supply the
    # colours and the layout. Shape pixels (2-30% of an image) weigh 1 + 4 in
    # the MSE, so that a wrong shape colour costs enough. (The components are
    # in projects/glide/models/training.py.)
    train_cfg=dict(stage='base', caption_dropout=0.2,
                   timestep_sampler=dict(type='HighNoiseTimestepSampler', prob=0.25, start=850),
                   noise=dict(type='TrainingNoise', offset=0.15, coarse=0.3),
                   mse_weight=dict(type='TruncatedSNRWeight', max_weight=1000.),
                   pixel_weights=[dict(type='ForegroundPixelWeight', weight=4.)]),
    # the default sampler of this model: DDIM, 25 steps (docs/model_card.md scores use it)
    test_cfg=dict(guidance_scale=3., num_inference_steps=25))

# ---------------------------------------------------------------- training
train_dataloader = dict(
    batch_size=16,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='ShapesDataset', split='train', size=500_000, seed=0, resolution=64))
train_cfg = dict(type='IterBasedTrainLoop', max_iters=100_000, val_interval=10**9)
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=4e-4, weight_decay=0.0, betas=(0.9, 0.99)),
    clip_grad=dict(max_norm=1.0),
    # the position embeddings start at zero and learn at 10x the rate
    paramwise_cfg=dict(custom_keys={'.position_embedding': dict(lr_mult=10.)}))
param_scheduler = [dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=200)]
custom_hooks = [
    dict(type='EMAHook', ema_type='ExponentialMovingAverage', momentum=0.005, priority='NORMAL')
]
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=100),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', interval=200, by_epoch=False, max_keep_ckpts=2),
    sampler_seed=dict(type='DistSamplerSeedHook'))
log_processor = dict(by_epoch=False)
env_cfg = dict(cudnn_benchmark=True, dist_cfg=dict(backend='nccl'))

# ----------------------------------------------------------------- testing
# 256 held-out captions (shapes combinations never seen in training), scored
# from the pixels by ShapesAccuracy.
test_dataloader = dict(
    batch_size=64,
    num_workers=2,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='ShapesDataset', split='held_out', size=256, seed=1, resolution=64))
test_evaluator = dict(type='ShapesAccuracy')
test_cfg = dict(type='TestLoop')
