# Local-text stage: each caption token attends only to its direct neighbours (`xf_local_window=1`), so a kind
# token cannot read the other shape's colour; no new parameters. Not shipped: docs/research/binding-history.md.
#   python tools/train.py projects/glide/research/configs/glide_tiny_shapes-64x64_local-text.py --amp \
#       --work-dir work_dirs/local_text --init-from work_dirs/attention32/iter_3000.pth
_base_ = ['./_base_/text_stage.py']

model = dict(unet=dict(xf_local_window=1))
