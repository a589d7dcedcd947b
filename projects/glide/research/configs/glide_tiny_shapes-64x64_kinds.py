# Kinds stage: the pixels where the kinds of shape differ (the KindMask transform) weigh 1 + 5 in the eps MSE on
# top of the foreground weight, on 60% two-shape scenes. Not shipped: docs/research/binding-history.md.
#   python tools/train.py projects/glide/research/configs/glide_tiny_shapes-64x64_kinds.py --amp \
#       --work-dir work_dirs/kinds --init-from work_dirs/attention32/iter_3000.pth
_base_ = [
    '../../configs/_base_/models/glide_tiny_shapes-64x64.py', '../../configs/_base_/datasets/shapes-64x64.py',
    '../../configs/_base_/schedules/warm_hold_decay.py', './_base_/default_runtime.py'
]

model = dict(train_cfg=dict(pixel_weights=[dict(type='KindPixelWeight', weight=5.),
                                           dict(type='ForegroundPixelWeight', weight=4.)]))
train_dataloader = dict(dataset=dict(pipeline=[dict(type='KindMask')], two_shape_prob=0.6))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.05, by_epoch=False, begin=0, end=100),
    dict(type='LinearLR', start_factor=1.0, end_factor=0.05, by_epoch=False, begin=1400, end=2400),
]
train_cfg = dict(max_iters=2400)
