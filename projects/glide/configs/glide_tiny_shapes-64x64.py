# The bundled default model: a tiny GLIDE base model (same classes as the
# full-size one) trained on the procedurally drawn "shapes" world.
#   train: python tools/train.py projects/glide/configs/glide_tiny_shapes-64x64.py --amp
#   test:  python tools/test.py projects/glide/configs/glide_tiny_shapes-64x64.py \
#              projects/glide/weights/glide_tiny_shapes-64x64.pth
_base_ = [
    './_base_/models/glide_tiny_shapes-64x64.py', './_base_/datasets/shapes-64x64.py',
    './_base_/schedules/adamw_100k.py', './_base_/default_runtime.py'
]
