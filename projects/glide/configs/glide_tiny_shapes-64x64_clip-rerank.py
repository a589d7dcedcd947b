# The bundled base model with the bundled noise-aware CLIP: each image is the CLIP's favourite of 8 samples
# (re-ranking; CLIP guidance via infer(classifier_scale=S)). The CLIP loads its own weights, so the checkpoint is the
# usual base model's.
#   test: python tools/test.py projects/glide/configs/glide_tiny_shapes-64x64_clip-rerank.py \
#             projects/glide/weights/glide_tiny_shapes-64x64.pth
_base_ = ['./glide_tiny_shapes-64x64.py', './_base_/models/clip_tiny_shapes.py']

model = dict(
    clip={{_base_.bundled_clip_tiny_shapes}},
    test_cfg=dict(rerank=8))
