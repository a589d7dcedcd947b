# The stages on binding words to shapes: the shipped model fine-tuned for 2,000 iterations (hold to 1,100),
# the text transformer at 3x the rate and 60% two-shape scenes (40% in the shipped config).
_base_ = [
    '../../../configs/_base_/models/glide_tiny_shapes-64x64.py', '../../../configs/_base_/datasets/shapes-64x64.py',
    '../../../configs/_base_/schedules/warm_hold_decay.py', './default_runtime.py'
]

train_dataloader = dict(dataset=dict(two_shape_prob=0.6))
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'.transformer.resblocks.': dict(lr_mult=3.)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.05, by_epoch=False, begin=0, end=100),
    dict(type='LinearLR', start_factor=1.0, end_factor=0.05, by_epoch=False, begin=1100, end=2000),
]
train_cfg = dict(max_iters=2000)
