# Fine-tuning from trained weights (--init-from, a fresh optimiser): lr warmed up over 100 iterations to 2e-4,
# held, then decayed linearly to 1e-5; stages of other lengths replace param_scheduler and max_iters.
_base_ = ['./adamw_100k.py']

optim_wrapper = dict(optimizer=dict(lr=2e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.05, by_epoch=False, begin=0, end=100),
    dict(type='LinearLR', start_factor=1.0, end_factor=0.05, by_epoch=False, begin=1900, end=3000),
]
train_cfg = dict(max_iters=3000)
