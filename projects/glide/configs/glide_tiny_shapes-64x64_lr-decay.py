# The last stage of the bundled default model: the shipped config for 3,000
# iterations from the weights of a model with text attention at 16x16 only;
# `--init-rename` moves the 32x32 level's upsampler to its new place after the
# new attention blocks, which start at their initial values.
#   python tools/train.py projects/glide/configs/glide_tiny_shapes-64x64_lr-decay.py --amp \
#       --work-dir work_dirs/attention32 --init-from work_dirs/lr_decay/iter_1100.pth \
#       --init-rename unet.out_blocks.5.1.=unet.out_blocks.5.2.
_base_ = [
    './_base_/models/glide_tiny_shapes-64x64.py', './_base_/datasets/shapes-64x64.py',
    './_base_/schedules/warm_hold_decay.py', './_base_/default_runtime.py'
]
