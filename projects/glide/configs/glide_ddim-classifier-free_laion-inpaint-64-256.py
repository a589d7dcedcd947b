# GLIDE inpainting cascade: the 64x64 inpainting model with classifier-free
# guidance, then the inpainting upsampler (noisy image, masked source, mask
# and upsampled low-res image: 10 input channels) with the 256x256 mask.
# Checkpoint: openai's base-inpaint.pt + upsample-inpaint.pt converted into
# one file with tools/model_converters/glide_openai_to_mmagic.py.
_base_ = ['./glide_ddim-classifier-free_laion-64-256.py']

model = dict(
    unet=dict(type='InpaintText2ImUNet'),
    unet_up=dict(type='SuperResInpaintText2ImUNet'),
    test_cfg=dict(guidance_scale=5.))
