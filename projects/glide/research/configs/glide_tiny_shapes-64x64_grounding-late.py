# Grounding-late stage: the grounding-box stage with the loss only at t <= 700, where the shapes have formed in
# x_t. Not shipped: docs/research/binding-history.md.
#   python tools/train.py projects/glide/research/configs/glide_tiny_shapes-64x64_grounding-late.py \
#       --work-dir work_dirs/grounding_late --init-from projects/glide/weights/glide_tiny_shapes-64x64.pth
_base_ = ['./glide_tiny_shapes-64x64_grounding-box.py']

model = dict(train_cfg=dict(aux_losses=[dict(type='TokenGroundingLoss', weight=1., sides=(16, ), max_timestep=700)]))
