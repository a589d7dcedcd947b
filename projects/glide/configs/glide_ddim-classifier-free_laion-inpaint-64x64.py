# GLIDE base inpainting model, 64x64, DDIM with classifier-free guidance 5
# (the reference notebook's scale): the base architecture plus the masked
# source image and mask as inputs (7 channels). Checkpoint: openai's
# base-inpaint.pt converted with tools/model_converters/glide_openai_to_mmagic.py.
# infer(prompt=..., inpaint_image=(1|B,3,H,W) in [-1,1], inpaint_mask=(1|B,1,H,W), 1 = keep)
_base_ = ['./glide_ddim-classifier-free_laion-64x64.py']

model = dict(unet=dict(type='InpaintText2ImUNet'), test_cfg=dict(guidance_scale=5.))
