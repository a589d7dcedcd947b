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
    # No clamp of the x0 guesses while upsampling: most channels of the
    # shapes colours are 0 or 255, where clamping a noisy guess removes only
    # its outward errors, so flat areas drifted inward by 2-5 levels
    # (iteration 6,000, 8 held-out scenes: PSNR 31.05 -> 31.99 dB without it).
    diffusion_scheduler_up=dict(
        type='GlideDDIMScheduler', num_train_timesteps=1000, beta_schedule='linear',
        clip_sample=False),
    # At high noise only the low-res input tells the colours, but the plain eps
    # MSE weighs the x0 error there by SNR ~ 0, so an upsampler trained with it
    # copies the input late: after 1,000 iterations its x0 guess at t = 700
    # was 8 dB PSNR and samples drifted in colour. Weight the x0 error where
    # SNR < 1 (Glide.mse_weights). Offset noise hides the overall colour in
    # x_t, so the model takes it from the low-res input rather than from a
    # chain that drifted: 0.1 from iteration 2,400 (fast27 PSNR 14.1 -> 24.1 dB
    # in the next 600 iterations), 0.3 from 4,400, after sampling showed a
    # mean-colour error of ~5 levels that no step below t = 400 corrected:
    # with 0.1, x_t's mean is too reliable at low noise for the model to learn
    # to overrule it (docs/default_model.md).
    train_cfg=dict(stage='upsampler', high_noise_prob=0., max_mse_weight=1000., offset_noise=0.3),
    test_cfg=dict(guidance_scale=3., num_inference_steps=25, num_inference_steps_up='fast27'))

# The upsampler has no attention, so it learns from 128x128 windows of the 256
# render and the matching 32x32 windows of the 64 render (a quarter of the
# compute of whole images) and still upsamples whole 64x64 images at test time.
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
