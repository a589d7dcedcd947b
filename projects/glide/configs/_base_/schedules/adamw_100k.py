# Training from scratch: AdamW at 4e-4 after a 200-iteration warm-up, clipped gradients, an EMA copy for sampling.
train_cfg = dict(type='IterBasedTrainLoop', max_iters=100_000, val_interval=10**9)
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=4e-4, weight_decay=0.0, betas=(0.9, 0.99)),
    clip_grad=dict(max_norm=1.0),
    # the position embeddings start at zero and learn at 10x the rate
    paramwise_cfg=dict(custom_keys={'.position_embedding': dict(lr_mult=10.)}))
param_scheduler = [dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=200)]
custom_hooks = [
    dict(type='EMAHook', ema_type='ExponentialMovingAverage', momentum=0.005, priority='NORMAL')
]
