# GLIDE cascade: 64x64 base model with classifier-free guidance, then the
# 64->256 upsampler (DDIM 'fast27'). One checkpoint holds both stages
# (unet.* and unet_up.*).
_base_ = ['./glide_ddim-classifier-free_laion-64x64.py']

model = dict(
    unet_up={{_base_.upsample_unet}},
    diffusion_scheduler_up={{_base_.upsample_scheduler}},
    test_cfg=dict(num_inference_steps_up='fast27'))
