# GLIDE base model, 64x64, DDIM sampling with classifier-free guidance.
# Checkpoints: glide_laion-64x64-02afff47.pth (OpenMMLab) or openai's base.pt
# converted with tools/model_converters/glide_openai_to_mmagic.py.
_base_ = ['./_base_/models/glide_laion.py']
# inference only: the registry scope, no training runtime
custom_imports = dict(imports=['projects.glide'], allow_failed_imports=False)
default_scope = 'mmagic'

model = dict(
    type='Glide',
    unet={{_base_.base_unet}},
    diffusion_scheduler={{_base_.base_scheduler}},
    test_cfg=dict(guidance_scale=3., num_inference_steps=100))
