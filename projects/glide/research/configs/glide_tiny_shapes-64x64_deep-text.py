# Deep-text stage: a text transformer of 4 blocks instead of 2, so that a kind token can take in its own colour;
# the new blocks start as the identity (`--init-zero .c_proj.`). Not shipped: docs/research/binding-history.md.
#   python tools/train.py projects/glide/research/configs/glide_tiny_shapes-64x64_deep-text.py --amp \
#       --work-dir work_dirs/deep_text --init-from work_dirs/attention32/iter_3000.pth --init-zero .c_proj.
_base_ = ['./_base_/text_stage.py']

model = dict(unet=dict(xf_layers=4))
