# GLIDE inpainting cascade: the 64x64 inpainting model with classifier-free
# guidance, then the inpainting upsampler (noisy image, masked source, mask
# and upsampled low-res image: 10 input channels) with the 256x256 mask.
# Checkpoint: openai's base-inpaint.pt + upsample-inpaint.pt converted into
# one file with tools/model_converters/glide_openai_to_mmagic.py.
_base_ = ['./_base_glide_unets.py']
custom_imports = dict(imports=['projects.glide'], allow_failed_imports=False)
default_scope = 'mmagic'

model = dict(
    type='Glide',
    unet={{_base_.base_inpaint_unet}},
    diffusion_scheduler={{_base_.base_scheduler}},
    unet_up={{_base_.upsample_inpaint_unet}},
    diffusion_scheduler_up={{_base_.upsample_scheduler}},
    test_cfg=dict(guidance_scale=5., num_inference_steps=100, num_inference_steps_up='fast27'))
