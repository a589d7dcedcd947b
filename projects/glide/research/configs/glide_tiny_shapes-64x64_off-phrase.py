# Off-phrase stage: OffPhraseLoss at 16x16, weight 1 (each shape's box should not read the other shape's words or
# the padding), with the text side held fixed so that no kind token learns a colour. Not shipped:
# docs/research/binding-history.md.
#   python tools/train.py projects/glide/research/configs/glide_tiny_shapes-64x64_off-phrase.py \
#       --work-dir work_dirs/off_phrase --init-from projects/glide/weights/glide_tiny_shapes-64x64.pth
_base_ = ['./_base_/text_stage.py']

model = dict(train_cfg=dict(aux_losses=[dict(type='OffPhraseLoss', weight=1., sides=(16, ))]))
train_dataloader = dict(dataset=dict(pipeline=[dict(type='ShapeGroundingTargets', kind_region='box')]))
_text = dict(lr_mult=0.)
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={'.transformer.resblocks.': _text, 'token_embedding': _text,
                                    'positional_embedding': _text, 'padding_embedding': _text,
                                    'final_ln': _text, 'transformer_proj': _text}))
