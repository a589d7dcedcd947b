# GLIDE base inpainting model, 64x64, DDIM with classifier-free guidance 5
# (the reference notebook's scale). Checkpoint: openai's base-inpaint.pt
# converted with tools/model_converters/glide_openai_to_mmagic.py.
# infer(prompt=..., inpaint_image=(1|B,3,H,W) in [-1,1], inpaint_mask=(1|B,1,H,W), 1 = keep)
_base_ = ['./_base_glide_unets.py']
custom_imports = dict(imports=['projects.glide'], allow_failed_imports=False)
default_scope = 'mmagic'

model = dict(
    type='Glide',
    unet={{_base_.base_inpaint_unet}},
    diffusion_scheduler={{_base_.base_scheduler}},
    test_cfg=dict(guidance_scale=5., num_inference_steps=100))
