"""Small configs shared by several test files."""

from configs import trifeatures


def tiny_trifeatures(loss: str = "comm"):
    """The CPU Trifeatures config of `loss`, shrunk to 16 px, a 2-stage CNN and narrow layers; views
    are taken as given (drawn in tf.data)."""
    cfg = trifeatures.get_config(f"cpu,loss={loss}")
    cfg.data.augment_on_device = False
    cfg.batch_size = 16
    if cfg.model.architecture == "fusion":
        cfg.model.width, cfg.model.heads, cfg.model.head_hidden, cfg.model.head_out = 32, 4, 32, 16
    else:
        cfg.model.latent, cfg.model.head_out = 16, 16
        if "head_hidden" in cfg.model:
            cfg.model.head_hidden = 32
    for name in cfg.model.modalities:
        cfg.model.encoders[name].input_shape = (16, 16, 3)
        cfg.model.encoders[name].encoder_args.channels = (8, 16)
    return cfg
