# The bundled default cascade: the tiny shapes base model plus a tiny
# 64->256 upsampler trained on pairs of the same scenes drawn at 64 and 256.
#   train (upsampler stage): python tools/train.py projects/glide/configs/glide_tiny_shapes-64-256.py --amp
_base_ = ['./glide_tiny_shapes-64x64.py']

model = dict(
    unet_up=dict(
        type='SuperResText2ImUNet',
        image_size=256,
        base_channels=32,
        channel_mult=(1, 1, 2, 2),
        resblocks_per_downsample=1,
        attention_res=(),
        num_head_channels=32,
        dropout=0.0,
        text_ctx={{_base_.text_ctx}},
        xf_width=16,
        xf_layers=1,
        xf_heads=1,
        norm_groups=8),
    # no clamp of the x0 guesses: at colour channels of 0 or 255 clamping keeps only the inward errors
    diffusion_scheduler_up=dict(
        type='GlideDDIMScheduler', num_train_timesteps=1000, beta_schedule='linear',
        clip_sample=False),
    # the x0 error weighed where SNR < 1 and stronger offset noise, so that the colours come from the low-res
    # input rather than from x_t (docs/research/base-model-history.md)
    train_cfg=dict(_delete_=True, stage='upsampler', caption_dropout=0.2,
                   timestep_sampler=dict(type='UniformTimestepSampler'),
                   noise=dict(type='TrainingNoise', offset=0.3, coarse=0.3),
                   mse_weight=dict(type='TruncatedSNRWeight', max_weight=1000.),
                   pixel_weights=[dict(type='ForegroundPixelWeight', weight=4.)]),
    # the upsampler starts from its bicubic-upsampled input noised to t = 400 and takes the 5 kept DDIM steps
    # 400, 300, ..., 0, in place of GLIDE's 27 from noise (upsampler PSNR and SSIM: docs/benchmarks.md)
    test_cfg=dict(guidance_scale=3., num_inference_steps=25, num_inference_steps_up='ddim10',
                  upsample_strength=0.4))

# no attention: it learns from 128x128 windows (and their 32x32 low-res windows) and upsamples whole images
train_dataloader = dict(
    batch_size=16,
    dataset=dict(type='ShapesDataset', split='train', size=200_000, seed=2, resolution=256,
                 low_res=64, crop=128))
train_cfg = dict(max_iters=7200)
# only unet_up learns in this stage; the base UNet gets no gradients
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)
test_dataloader = dict(
    batch_size=16,
    dataset=dict(type='ShapesDataset', split='held_out', size=256, seed=1, resolution=256,
                 low_res=64))
