# The last stage of the bundled default model: the shipped config (text
# attention at 32x32 and 16x16) for 3,000 iterations from the weights of a
# model with attention at 16x16 only (`--init-from`, so a fresh optimiser;
# the new attention blocks start at their random initial values, and `--init-rename` moves the
# 32x32 level's upsampler to its new place after them), the learning rate
# warmed up over 100 iterations to 2e-4 (half the config's), held there to
# iteration 1,900 and then decayed linearly to 1e-5 by iteration 3,000.
#   python tools/train.py projects/glide/configs/glide_tiny_shapes-64x64_lr-decay.py --amp \
#       --work-dir work_dirs/attention32 --init-from work_dirs/lr_decay/iter_1100.pth \
#       --init-rename unet.out_blocks.5.1.=unet.out_blocks.5.2.
_base_ = ['./glide_tiny_shapes-64x64.py']

optim_wrapper = dict(optimizer=dict(lr=2e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.05, by_epoch=False, begin=0, end=100),
    dict(type='LinearLR', start_factor=1.0, end_factor=0.05, by_epoch=False, begin=1900, end=3000),
]
train_cfg = dict(max_iters=3000)
