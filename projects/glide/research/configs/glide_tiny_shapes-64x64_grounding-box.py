# Grounding-box stage: the grounding stage with each kind word grounded on its shape's bounding box, where the
# pixels that decide a kind lie. Not shipped: docs/research/binding-history.md.
#   python tools/train.py projects/glide/research/configs/glide_tiny_shapes-64x64_grounding-box.py \
#       --work-dir work_dirs/grounding_box --init-from projects/glide/weights/glide_tiny_shapes-64x64.pth
_base_ = ['./glide_tiny_shapes-64x64_grounding.py']

train_dataloader = dict(dataset=dict(pipeline=[dict(type='ShapeGroundingTargets', kind_region='box')]))
