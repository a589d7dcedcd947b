# Runtime of the trainable configs: the plugin's registry scope, the seed, iteration-based logs and checkpoints.
custom_imports = dict(imports=['projects.glide'], allow_failed_imports=False)
default_scope = 'mmagic'
randomness = dict(seed=0)

default_hooks = dict(
    # mmengine's timer: mmagic's reads `test_loop.total_length`, which only mmagic's own loops have, and fails
    # every 10th test iteration under mmengine's TestLoop
    timer=dict(type='mmengine.IterTimerHook'),
    logger=dict(type='LoggerHook', interval=100),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='AtomicCheckpointHook', interval=200, by_epoch=False, max_keep_ckpts=2),
    sampler_seed=dict(type='DistSamplerSeedHook'))
log_processor = dict(by_epoch=False)
env_cfg = dict(cudnn_benchmark=True, dist_cfg=dict(backend='nccl'))
