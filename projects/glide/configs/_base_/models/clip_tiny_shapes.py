# The noise-aware CLIP of the shapes world: openai's noised CLIP classes at a tiny width (all 49408 token rows of
# the CLIP tokenizer, most of the file; shapes captions are < 20 tokens). `bundled_clip_tiny_shapes` adds the
# shipped weights, for CLIP guidance and re-ranking of the bundled base model.
clip_tiny_shapes = dict(
    type='NoisedCLIP',
    text_encoder=dict(width=64, heads=4, layers=4, vocab_size=49408, text_ctx=32),
    image_encoder=dict(width=128, heads=4, layers=4, image_size=64, patch_size=8, num_timesteps=1000),
    embed_dim=64,
    logit_scale=30.,
    tokenizer=dict(type='GlideCLIPTokenizer'))
bundled_clip_tiny_shapes = dict(clip_tiny_shapes,
                                pretrained='projects/glide/weights/glide_clip_tiny_shapes-64x64.pth')
