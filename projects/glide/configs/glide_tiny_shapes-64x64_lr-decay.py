# The last stage of the bundled default model: the shipped config for 1,100
# iterations from a run's weights (`--init-from`, so a fresh optimiser), the
# learning rate warmed up over 100 iterations to 2e-4 (half the config's) and
# then decayed linearly to 1e-5 by iteration 1,100.
#   python tools/train.py projects/glide/configs/glide_tiny_shapes-64x64_lr-decay.py --amp \
#       --work-dir work_dirs/lr_decay --init-from work_dirs/polish/iter_13000.pth
_base_ = ['./glide_tiny_shapes-64x64.py']

optim_wrapper = dict(optimizer=dict(lr=2e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.05, by_epoch=False, begin=0, end=100),
    dict(type='LinearLR', start_factor=1.0, end_factor=0.05, by_epoch=False, begin=100, end=1100),
]
train_cfg = dict(max_iters=1100)
