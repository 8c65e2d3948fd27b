"""CoMM (or a baseline) on Bimodal Trifeatures: two images that share their shape.

get_config(arg) tokens (comma-separated):
  cpu          the variant sized for a 2-core CPU: 32 px, a small CNN, width 64, lr 1e-3, crops of at
               least 20% of the area; with res=64 the CNN has a fourth stage (32-64-128-128) and with
               res=128 a fifth (32-64-128-128-128), so the fusion still sees 4 x 4 tokens per image
  loss=NAME    comm (default), cross, cross_self, cmc, simclr, factorcl (a method of comm_jax.methods)
  bias=true    pretrain on pairs biased by the texture->colour mapping (for the synergy task S)
  res=N        image size: 32, 64, 128 or 224 (default 224, or 32 with `cpu`)
  crop=F       smallest area of the SimCLR views' random crops, 0 < F <= 1 (default 0.08, or 0.2 with
               `cpu`); the weak views (CLIP's, Cross+Self's cross-modal term) always crop 0.5-1
  ood=true     pretrain and probe on `bimodal_trifeatures_shift` data without the held-out shape,
               texture and colour, and add the `ood` evaluator scoring every shift of that builder
               (with bias=true: pretraining on its biased pairs, scored on the synergy shift)
  conv3x3=IMPL AlexNet's 3x3 layers: direct (default) or winograd (comm_jax.models.winograd; same
               parameters, measured in docs/benchmarks/cpu_ratio.md)

Full size follows the paper and the reference: AlexNet features on 224 px, batch 64, AdamW lr 3e-4,
weight decay 1e-4, 100 epochs of the 10,000 training pairs, temperature 0.1. CoMM fuses the two
images' 6 x 6 feature maps in a width-512, 1-layer, 8-head transformer. The baselines have no
fusion: each image -> AlexNet -> flattened map -> linear to 256 -> its own head (Cross: CLIP's
bias-free linear 256 -> 512 on weak views, probed on the projections; Cross+Self: MLP 256-1024-256,
probed on the 256-d vectors; SimCLR: image 1 only). FactorCL (self-supervised) pairs each image as
it is with one strong view and scores pairs with critics of width 2 x latent (the reference's 512 at
latent 256; 128 in the CPU variant), 5 critic updates a step.
"""

from __future__ import annotations

import ml_collections

from comm_jax import methods, view_recipes as recipes
from configs import common

TRAIN_PAIRS = 10_000
RESOLUTIONS = (32, 64, 128, 224)   # the bimodal_trifeatures builder's sizes
SHIFT_BUILDER = "bimodal_trifeatures_shift"
# The shifts of unbiased pretraining; after biased pretraining only `synergy` breaks what was learnt
# while every image stays in distribution.
UNBIASED_SHIFTS = ("texture_1", "texture_both", "color_1", "color_both", "shape_both", "blank_1", "noise_1", "blur_1")
BIASED_SHIFTS = ("synergy",)


def _fusion_model(cpu: bool) -> ml_collections.ConfigDict:
    if cpu:
        return ml_collections.ConfigDict(dict(architecture="fusion", width=64, depth=1, heads=4, mlp_ratio=4,
                                              head_hidden=256, head_out=128))
    return ml_collections.ConfigDict(dict(architecture="fusion", width=512, depth=1, heads=8, mlp_ratio=4,
                                          head_hidden=512, head_out=256))


def _towers_model(method: str, cpu: bool) -> ml_collections.ConfigDict:
    """The reference's baselines: latent 256, CLIP's projection to 512 or the SimCLR MLP 1024 -> 256;
    the CPU variant keeps the ratios at latent 64."""
    latent = 64 if cpu else 256
    if method == "cross":
        return ml_collections.ConfigDict(dict(architecture="towers", latent=latent, projection="linear",
                                              head_out=2 * latent, representation="projected"))
    return ml_collections.ConfigDict(dict(architecture="towers", latent=latent, projection="mlp",
                                          head_hidden=4 * latent, head_out=latent, representation="pooled"))


def _add_ood(c: ml_collections.ConfigDict, res: int, bias: bool) -> None:
    """Pretraining and probes on in-distribution data only; the `ood` evaluator on every shift."""
    prefix = f"{SHIFT_BUILDER}/{res}px_"
    c.data.name = prefix + ("id_biased" if bias else "id")
    c.evals.probe_data = prefix + "id"
    shifts = BIASED_SHIFTS if bias else UNBIASED_SHIFTS
    c.evals.datasets = {kind: prefix + kind for kind in shifts}
    # The probe behind the logit scores and failure prediction predicts image 1's texture: shape is
    # probed near perfectly, leaving too few failures to rank, and synergy is constant under bias.
    evaluator = {"type": "ood", "shifts": shifts, "task": "U1"}
    if bias:     # the ID data of biased pretraining are its biased pairs, not the probes' unbiased ones
        c.evals.datasets["id_biased"] = prefix + "id_biased"
        evaluator["dataset"] = "id_biased"
    c.evals.evaluators["ood"] = evaluator


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    tokens = common.parse_arg(arg, known=("cpu", "loss", "bias", "res", "crop", "ood", "conv3x3"))
    cpu = common.as_bool(tokens.get("cpu", "false"), "cpu")
    bias = common.as_bool(tokens.get("bias", "false"), "bias")
    ood = common.as_bool(tokens.get("ood", "false"), "ood")
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
    c.loss.name = common.method_name(tokens)
    method = methods.get(c.loss.name)
    c.batch_size = 64
    epochs = 100
    c.num_steps = epochs * TRAIN_PAIRS // c.batch_size
    if cpu:
        c.num_steps = 1500
        c.optimizer.lr = 1e-3         # 1500 steps at 3e-4 leave the probes near chance
        c.log_every = 50
        c.ckpt_every = 500
    else:
        c.log_every = 100
        c.ckpt_every = 2000

    if cpu:
        # One more stage per doubling keeps the 4 x 4 token grid of the fusion model.
        channels = {32: (32, 64, 96), 64: (32, 64, 128, 128)}.get(res, (32, 64, 128, 128, 128))
        image_encoder = dict(encoder="small_cnn", encoder_args=dict(channels=channels))
    else:
        image_encoder = dict(encoder="alexnet", adapter_args=dict(base_grid=(6, 6)))
        if "conv3x3" in tokens:
            image_encoder["encoder_args"] = dict(conv3x3=tokens["conv3x3"])
    c.model = _fusion_model(cpu) if method.architecture == "fusion" else _towers_model(c.loss.name, cpu)
    modalities = ("image_1", "image_2")[:method.max_modalities or 2]
    c.model.modalities = modalities
    if method.architecture == "towers":
        image_encoder.pop("adapter_args", None)
    c.model.encoders = {m: dict(image_encoder, input_shape=(res, res, 3)) for m in modalities}
    c.model.precision = c.get_ref("precision")

    # The CPU variant's 32 px images keep too little of the shape in crops of 8% of the area, so it
    # crops at least 20%; at 64 px crops of at least 50% lift CoMM's R by 4-7 points at equal steps.
    strong = recipes.simclr_image_ops(res, crop_scale=(crop, 1.0))
    weak = recipes.weak_image_ops(res)
    ops = {"view1": strong, "view2": strong, "weak": weak}
    if c.loss.name == "factorcl":
        # FactorCL's x is the example as it is (normalised, as for the probes) and x' its augmented view.
        ops["view1"] = "normalize"
        c.loss.critic_hidden = 2 * c.model.latent
        c.loss.critic_steps = 5
    c.data = ml_collections.ConfigDict(dict(
        name=f"bimodal_trifeatures/{res}px{'_biased' if bias else ''}",
        data_dir=ml_collections.config_dict.placeholder(str),
        prepare=True,                 # generate the dataset offline on first use
        train_split="train",
        modalities={m: m for m in modalities},
        views={v: {m: ops[v] for m in modalities} for v in method.views},
        augment_on_device=True,       # views drawn in the train step (comm_jax/device_augment.py)
        eval_ops={m: "normalize" for m in modalities},
        labels=("shape", "texture_1", "texture_2", "synergy"),
    ))
    # Probing always uses unbiased pairs: the synergy task is measured on data not biased by M.
    c.evals.probe_data = f"bimodal_trifeatures/{res}px"
    c.evals.tasks = {"R": "shape", "U1": "texture_1", "U2": "texture_2", "S": "synergy"}
    c.evals.task_means = {"U": ("U1", "U2")}
    c.evals.evaluators = {
        "probe": {"type": "linear_probe"},
        # The synergy label is 10% positives: an unweighted probe (the reference's) can score exactly
        # chance on features that carry it. The class-balanced probe shows whether they do.
        "probe_bal": {"type": "linear_probe", "class_weight": "balanced", "tasks": ("S",)},
        "knn": {"type": "knn"},
        # No retrieval: the two images share only their shape, so a pair's partner is one of ~400
        # equally good test images (top-1 at most ~0.25%).
    }
    if ood:
        _add_ood(c, res, bias)
    return c
