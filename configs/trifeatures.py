"""CoMM (or a baseline) on Bimodal Trifeatures: two images that share their shape.

get_config(arg) tokens (comma-separated):
  cpu          the variant sized for a 2-core CPU: 32 px, a small CNN, width 64, lr 1e-3, crops of at
               least 20% of the area (about 3 min of training on 2 quiet cores); with res=64 the CNN
               has a fourth stage (32-64-128-128) and with res=128 a fifth (32-64-128-128-128), so the
               fusion still sees 4 x 4 tokens per image
  loss=NAME    comm (default), cross, cross_self, cmc, simclr
  bias=true    pretrain on pairs biased by the texture->colour mapping (for the synergy task S)
  res=N        image size: 32, 64, 128 or 224 (default 224, or 32 with `cpu`)
  crop=F       smallest area of the SimCLR views' random crops, 0 < F <= 1 (default 0.08, or 0.2 with
               `cpu`); Cross's weak views always crop 0.5-1
  head=KIND    how Z reaches the loss: linear (CLIP's bias-free linear projection per modality; the
               default for loss=cross, as the reference's Cross on Trifeatures) or mlp (the 3-layer
               projection head; the default for every other loss). Cross runs trained before session 8
               used mlp: `loss=cross,head=mlp` resumes and reproduces them

Full size follows the paper: AlexNet features on 224 px, fusion width 512, 1 layer, 8 heads, batch 64,
AdamW lr 3e-4, weight decay 1e-4, 100 epochs of the 10,000 training pairs, temperature 0.1; CLIP
(`loss=cross`) on the reference's weak views (crop scale 0.5-1), the others on SimCLR views.
"""

from __future__ import annotations

import ml_collections

from configs import common

TRAIN_PAIRS = 10_000
RESOLUTIONS = (32, 64, 128, 224)   # the bimodal_trifeatures builder's sizes


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    tokens = common.parse_arg(arg, known=("cpu", "loss", "bias", "res", "crop", "head"))
    cpu = common.as_bool(tokens.get("cpu", "false"), "cpu")
    bias = common.as_bool(tokens.get("bias", "false"), "bias")
    res = int(tokens.get("res", 32 if cpu else 224))
    if res not in RESOLUTIONS:
        raise ValueError(f"config argument res={res} must be one of {RESOLUTIONS}")
    try:
        crop = float(tokens.get("crop", 0.2 if cpu else 0.08))
    except ValueError:
        raise ValueError(f"config argument crop={tokens['crop']!r} must be a number in (0, 1]") from None
    if not 0.0 < crop <= 1.0:
        raise ValueError(f"config argument crop={crop} must be in (0, 1]: the smallest crop area")

    c = common.base_config()
    c.loss.name = tokens.get("loss", "comm")
    if c.loss.name not in common.LOSSES:
        raise ValueError(f"config argument loss={c.loss.name!r} must be one of {common.LOSSES}")
    c.batch_size = 64
    epochs = 100
    c.num_steps = epochs * TRAIN_PAIRS // c.batch_size

    if cpu:
        # One more stage per doubling keeps the 4 x 4 token grid (measured: docs/results/trifeatures_cpu/).
        channels = {32: (32, 64, 96), 64: (32, 64, 128, 128)}.get(res, (32, 64, 128, 128, 128))
        image_encoder = dict(encoder="small_cnn", encoder_args=dict(channels=channels))
        c.model = ml_collections.ConfigDict(dict(width=64, depth=1, heads=4, mlp_ratio=4,
                                                 head_hidden=256, head_out=128))
        c.num_steps = 1500
        c.optimizer.lr = 1e-3         # measured: 1500 steps at 3e-4 leave the probes near chance
        c.log_every = 50
        c.ckpt_every = 500
    else:
        image_encoder = dict(encoder="alexnet", adapter_args=dict(base_grid=(6, 6)))
        c.model = ml_collections.ConfigDict(dict(width=512, depth=1, heads=8, mlp_ratio=4,
                                                 head_hidden=512, head_out=256))
        c.log_every = 100
        c.ckpt_every = 2000
    c.model.modalities = ("image_1", "image_2")
    c.model.encoders = {m: dict(image_encoder, input_shape=(res, res, 3)) for m in c.model.modalities}
    c.model.logit_scale = c.loss.name == "cross"
    # The reference's CLIP baseline projects each image's Z linearly; an MLP head would let the loss drop
    # the textures in the head and leave them in Z (measured: Cross U 34.7 -> 29.4 at 32 px, 34.9 -> 21.9
    # at 64 px; see docs/results/trifeatures_cpu/).
    head = tokens.get("head", "linear" if c.loss.name == "cross" else "mlp")
    if head not in ("mlp", "linear"):
        raise ValueError(f"config argument head={head!r} must be mlp or linear")
    if head == "linear":   # absent means mlp, so the configs saved by earlier runs still match
        c.model.projection = "linear"
    c.model.precision = c.get_ref("precision")

    # As the reference: CLIP trains on weakly augmented views (crop scale 0.5-1, no colour), the
    # other methods on SimCLR views. The CPU variant's 32 px images keep too little of the shape in
    # crops of 8% of the area, so it crops at least 20%; at 64 px crops of at least 50% lift CoMM's R
    # by 4-7 points at equal steps (measured: docs/results/trifeatures_cpu/).
    if c.loss.name == "cross":
        augment_ops = common.weak_image_ops(res)
    else:
        augment_ops = common.simclr_image_ops(res, crop_scale=(crop, 1.0))
    c.data = ml_collections.ConfigDict(dict(
        name=f"bimodal_trifeatures/{res}px{'_biased' if bias else ''}",
        data_dir=ml_collections.config_dict.placeholder(str),
        prepare=True,                 # generate the dataset offline on first use
        train_split="train",
        modalities={m: m for m in c.model.modalities},
        augment={m: augment_ops for m in c.model.modalities},
        augment_on_device=True,       # both views drawn in the train step (comm_jax/device_augment.py)
        eval_ops={m: "normalize" for m in c.model.modalities},
        labels=("shape", "texture_1", "texture_2", "synergy"),
    ))
    # Probing always uses unbiased pairs: the synergy task is measured on data not biased by M.
    c.evals.probe_data = f"bimodal_trifeatures/{res}px"
    c.evals.tasks = {"R": "shape", "U1": "texture_1", "U2": "texture_2", "S": "synergy"}
    c.evals.task_means = {"U": ("U1", "U2")}
    # As the reference: the unimodal baselines are probed on each image's own Z, concatenated (they never
    # fuse the two images in training, so their fused Z is an untrained function); CoMM on its fused Z.
    features = "concat" if c.loss.name in ("cross", "cross_self") else "joint"
    c.evals.evaluators = {
        "probe": {"type": "linear_probe", "features": features},
        # The synergy label is 10% positives: an unweighted probe (the reference's) can score exactly
        # chance on features that carry it. The class-balanced probe shows whether they do.
        "probe_bal": {"type": "linear_probe", "features": features, "class_weight": "balanced", "tasks": ("S",)},
        "knn": {"type": "knn", "features": features},
        # No retrieval: the two images share only their shape, so a pair's partner is one of ~400 equally
        # good test images (top-1 at most ~0.25%). It read 0.0000 at every checkpoint of the CPU table and
        # of the 64 px runs (Cross at 32 px: the partner's median rank is 1,096 of 4,084).
    }
    return c
