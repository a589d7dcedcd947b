# Grounding stage: TokenCompose's word grounding loss (Wang et al. 2024) at 16x16, weight 1: each shape's colour
# and kind words should draw their attention from that shape's pixels. Not shipped: docs/research/binding-history.md.
#   python tools/train.py projects/glide/research/configs/glide_tiny_shapes-64x64_grounding.py --amp \
#       --work-dir work_dirs/grounding --init-from projects/glide/weights/glide_tiny_shapes-64x64.pth
_base_ = ['./_base_/text_stage.py']

model = dict(train_cfg=dict(aux_losses=[dict(type='TokenGroundingLoss', weight=1., sides=(16, ))]))
train_dataloader = dict(dataset=dict(pipeline=[dict(type='ShapeGroundingTargets')]))
