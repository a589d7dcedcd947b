# GLIDE cascade: 64x64 base model with classifier-free guidance, then the
# 64->256 upsampler (DDIM 'fast27'). One checkpoint holds both stages
# (unet.* and unet_up.*).
_base_ = ['./_base_glide_unets.py']
custom_imports = dict(imports=['projects.glide'], allow_failed_imports=False)
default_scope = 'mmagic'

model = dict(
    type='Glide',
    unet={{_base_.base_unet}},
    diffusion_scheduler={{_base_.base_scheduler}},
    unet_up={{_base_.upsample_unet}},
    diffusion_scheduler_up={{_base_.upsample_scheduler}},
    test_cfg=dict(guidance_scale=3., num_inference_steps=100, num_inference_steps_up='fast27'))
