# The bundled cascade with the bundled noise-aware CLIP re-ranking 8 base samples per image (the upsampler runs
# once); tools/glide_demo.py --rerank N / --clip-scale S switches to it.
#   demo: python tools/glide_demo.py "PROMPT" --rerank 8
_base_ = ['./glide_tiny_shapes-64-256.py', './_base_/models/clip_tiny_shapes.py']

model = dict(
    clip={{_base_.bundled_clip_tiny_shapes}},
    test_cfg=dict(rerank=8))
