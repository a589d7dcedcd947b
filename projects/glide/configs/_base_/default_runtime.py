# Runtime of the trainable configs: the plugin's registry scope, the seed, iteration-based logs and checkpoints.
custom_imports = dict(imports=['projects.glide'], allow_failed_imports=False)
default_scope = 'mmagic'
randomness = dict(seed=0)

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=100),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='AtomicCheckpointHook', interval=200, by_epoch=False, max_keep_ckpts=2),
    sampler_seed=dict(type='DistSamplerSeedHook'))
log_processor = dict(by_epoch=False)
env_cfg = dict(cudnn_benchmark=True, dist_cfg=dict(backend='nccl'))
