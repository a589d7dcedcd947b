# The procedurally drawn shapes world at 64x64: an endless training stream, and
# 256 held-out captions (shapes combinations never seen in training) scored
# from the pixels by ShapesAccuracy.
train_dataloader = dict(
    batch_size=16,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='ShapesDataset', split='train', size=500_000, seed=0, resolution=64))

test_dataloader = dict(
    batch_size=64,
    num_workers=2,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='ShapesDataset', split='held_out', size=256, seed=1, resolution=64))
test_evaluator = dict(type='ShapesAccuracy')
test_cfg = dict(type='TestLoop')
