# Full-size GLIDE (filtered) architectures and samplers, as released by openai and OpenMMLab.
base_unet = dict(
    type='Text2ImUNet',
    image_size=64,
    base_channels=192,
    in_channels=3,
    out_channels=6,
    resblocks_per_downsample=3,
    attention_res=(32, 16, 8),
    num_head_channels=64,
    dropout=0.1,
    text_ctx=128,
    xf_width=512,
    xf_layers=16,
    xf_heads=8,
    xf_final_ln=True,
    xf_padding=True)

upsample_unet = dict(base_unet, type='SuperResText2ImUNet', image_size=256, resblocks_per_downsample=2)

base_scheduler = dict(
    type='GlideDDIMScheduler', num_train_timesteps=1000, beta_schedule='squaredcos_cap_v2', eta=0.)
upsample_scheduler = dict(
    type='GlideDDIMScheduler', num_train_timesteps=1000, beta_schedule='linear', eta=0.)

