# The bundled noise-aware CLIP of the shapes world (CLIP guidance and
# re-ranking for glide_tiny_shapes-64x64.py): the classes of openai's noised
# CLIP at a tiny width, trained contrastively on images noised at uniform
# timesteps, each image also against hard-negative captions (its caption with
# the kinds, colours or relation of its shapes swapped, or one attribute
# changed), so that the text side must bind words to shapes.
#   train:   python tools/train.py projects/glide/configs/glide_clip_tiny_shapes-64x64.py
#   test:    python tools/test.py projects/glide/configs/glide_clip_tiny_shapes-64x64.py \
#                projects/glide/weights/glide_clip_tiny_shapes-64x64.pth
#   publish: python tools/model_converters/glide_publish.py WORK_DIR/iter_N.pth \
#                projects/glide/weights/glide_clip_tiny_shapes-64x64.pth --fp16
_base_ = ['./_base_/default_runtime.py', './_base_/models/clip_tiny_shapes.py']

model = dict(
    type='NoisedCLIPModel',
    clip={{_base_.clip_tiny_shapes}},
    beta_schedule='squaredcos_cap_v2',
    eval_timesteps=(0, 250, 500, 750, 900),
    # a small patch projection starts the patch features at the scale of the position embeddings, so the tower sees
    # where things are (docs/research/clip-shapes.md)
    init_cfg=dict(type='Normal', layer='Conv2d', std=0.004))

# ---------------------------------------------------------------- training
max_iters = 2500
num_negatives = 6
train_dataloader = dict(
    batch_size=64,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='collate_hard_negatives'),
    # binding lives in the two-shape scenes: half of the scenes have two
    dataset=dict(type='ShapesDataset', split='train', size=500_000, seed=0, resolution=64,
                 two_shape_prob=0.5,
                 pipeline=[dict(type='HardNegativeCaptions', num=num_negatives, seed=0)]))
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=500)
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.01, betas=(0.9, 0.98)),
    clip_grad=dict(max_norm=1.0),
    paramwise_cfg=dict(custom_keys={'image_encoder.position_embedding': dict(lr_mult=10.)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=200),
    dict(type='CosineAnnealingLR', T_max=max_iters - 200, eta_min=1e-5, by_epoch=False, begin=200,
         end=max_iters)
]
custom_hooks = [
    dict(type='EMAHook', ema_type='ExponentialMovingAverage', momentum=0.01, priority='NORMAL')
]
default_hooks = dict(logger=dict(interval=50), checkpoint=dict(interval=500, max_keep_ckpts=3))
env_cfg = dict(cudnn_benchmark=False)

# ------------------------------------------------------- validation / test
# retrieval of each image's caption among its hard negatives at fixed noise levels (val: seen scenes, test: held out)
_eval_loader = dict(
    batch_size=64,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='collate_hard_negatives'))
val_dataloader = dict(
    **_eval_loader,
    dataset=dict(type='ShapesDataset', split='seen', size=256, seed=1, resolution=64,
                 pipeline=[dict(type='HardNegativeCaptions', num=num_negatives, seed=1)]))
val_evaluator = dict(type='CLIPRetrievalAccuracy')
val_cfg = dict(type='ValLoop')
test_dataloader = dict(
    **_eval_loader,
    dataset=dict(type='ShapesDataset', split='held_out', size=256, seed=1, resolution=64,
                 pipeline=[dict(type='HardNegativeCaptions', num=num_negatives, seed=1)]))
test_evaluator = dict(type='CLIPRetrievalAccuracy')
test_cfg = dict(type='TestLoop')
