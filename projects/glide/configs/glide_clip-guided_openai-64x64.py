# openai's released base model steered by its noise-aware CLIP, with the recipe of openai's clip_guided notebook:
# CLIP guidance alone (no classifier-free guidance), scale 3, 100 ancestral steps.
#   convert: python tools/model_converters/glide_openai_to_mmagic.py --base base.pt \
#                --clip-image image-enc.pt --clip-text text-enc.pt --out glide_clip-guided_openai-64x64.pth
#   test:    python tools/test.py projects/glide/configs/glide_clip-guided_openai-64x64.py \
#                glide_clip-guided_openai-64x64.pth --prompts prompts.txt
_base_ = ['./glide_ddim-classifier-free_laion-64x64.py']

model = dict(
    clip=dict(type='NoisedCLIP'),
    test_cfg=dict(guidance_scale=1., classifier_scale=3., sampler='ddpm', num_inference_steps=100))
