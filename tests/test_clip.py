"""Pretrained CLIP towers: a tiny random Hugging Face CLIPModel saved in each layout users have (HF
safetensors and pytorch_model.bin, open_clip state dicts) loads into the Flax towers and gives the
PyTorch model's token features and embeddings; bad files fail with errors naming the file and key."""

import json
import os
import pickle
import zipfile

import numpy as np
import pytest

os.environ.setdefault("USE_TF", "0")     # transformers would import tensorflow (seconds) for nothing here
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from comm_jax.models.clip import CLIP_MEAN, CLIP_STD, CheckpointError, TokenizerFilesError, UnsafePickleError, \
    load_clip  # noqa: E402
from comm_jax.models.clip.tensor_files import read_safetensors, read_torch_archive  # noqa: E402

VOCAB, SOT, EOT, CONTEXT, IMAGE = 99, 97, 98, 16, 32
TOL = 1e-5


def tiny_clip_model():
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=CONTEXT, bos_token_id=SOT,
                         eos_token_id=EOT, pad_token_id=0),
        vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                           image_size=IMAGE, patch_size=8),
        projection_dim=24)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():   # random LayerNorm affine and biases, so a swapped weight and bias cannot agree
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def open_clip_state(hf: dict) -> dict:
    """The HF CLIPModel's tensors under open_clip's names: in_proj = cat(q, k, v); proj = projection.T."""
    out = {"visual.conv1.weight": hf["vision_model.embeddings.patch_embedding.weight"],
           "visual.class_embedding": hf["vision_model.embeddings.class_embedding"],
           "visual.positional_embedding": hf["vision_model.embeddings.position_embedding.weight"],
           "visual.proj": hf["visual_projection.weight"].T.contiguous(),
           "token_embedding.weight": hf["text_model.embeddings.token_embedding.weight"],
           "positional_embedding": hf["text_model.embeddings.position_embedding.weight"],
           "text_projection": hf["text_projection.weight"].T.contiguous(),
           "logit_scale": hf["logit_scale"]}
    norms = {"visual.ln_pre": "vision_model.pre_layrnorm", "visual.ln_post": "vision_model.post_layernorm",
             "ln_final": "text_model.final_layer_norm"}
    for tower, dst in (("vision_model", "visual.transformer"), ("text_model", "transformer")):
        for i in range(2):
            s, d = f"{tower}.encoder.layers.{i}.", f"{dst}.resblocks.{i}."
            for kind in ("weight", "bias"):
                out[f"{d}attn.in_proj_{kind}"] = torch.cat([hf[f"{s}self_attn.{n}_proj.{kind}"] for n in "qkv"])
                out[f"{d}attn.out_proj.{kind}"] = hf[f"{s}self_attn.out_proj.{kind}"]
                out[f"{d}mlp.c_fc.{kind}"] = hf[f"{s}mlp.fc1.{kind}"]
                out[f"{d}mlp.c_proj.{kind}"] = hf[f"{s}mlp.fc2.{kind}"]
            norms.update({f"{d}ln_1": f"{s}layer_norm1", f"{d}ln_2": f"{s}layer_norm2"})
    for d, s in norms.items():
        out[f"{d}.weight"], out[f"{d}.bias"] = hf[f"{s}.weight"], hf[f"{s}.bias"]
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The tiny model saved as HF safetensors (one file and sharded) and .bin and as open_clip files, and its PyTorch outputs
    on random images (already CLIP-sized, in [0, 1]) and token ids (start, words, end, zero padding)."""
    root = tmp_path_factory.mktemp("clip")
    model = tiny_clip_model()
    model.save_pretrained(root / "hf_safetensors")
    model.save_pretrained(root / "hf_bin", safe_serialization=False)
    model.save_pretrained(root / "hf_shards", max_shard_size="200KB")
    assert (root / "hf_shards" / "model.safetensors.index.json").exists()
    state = open_clip_state({k: v.detach().clone() for k, v in model.state_dict().items()})
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, root / "open_clip.pt")
    (root / "open_clip_dir").mkdir()
    from safetensors.torch import save_file
    save_file(state, root / "open_clip_dir" / "open_clip_model.safetensors")
    (root / "open_clip_dir" / "open_clip_config.json").write_text(json.dumps({"model_cfg": {
        "embed_dim": 24, "quick_gelu": True, "vision_cfg": {"width": 48, "head_width": 12},
        "text_cfg": {"width": 32, "heads": 4}}}))

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (3, IMAGE, IMAGE, 3)).astype(np.float32)
    ids = np.zeros((3, CONTEXT), np.int64)
    for row, end in enumerate((5, 9, CONTEXT - 1)):
        ids[row, 0], ids[row, 1:end], ids[row, end] = SOT, rng.integers(1, SOT, end - 1), EOT
    pixels = torch.from_numpy(((images - np.array(CLIP_MEAN)) / np.array(CLIP_STD)).astype(np.float32))
    with torch.no_grad():
        vision = model.vision_model(pixel_values=pixels.permute(0, 3, 1, 2))
        text = model.text_model(input_ids=torch.from_numpy(ids))
        expected = {"image_tokens": vision.last_hidden_state, "image_pooled": vision.pooler_output,
                    "image_embedding": model.visual_projection(vision.pooler_output),
                    "text_tokens": text.last_hidden_state, "text_pooled": text.pooler_output,
                    "text_embedding": model.text_projection(text.pooler_output)}
    return root, images, ids, {k: v.numpy() for k, v in expected.items()}, float(model.logit_scale.detach())


def outputs_of(clip, images, ids) -> dict:
    image, text = clip.encode_images(images), clip.encode_text(ids)
    return {"image_tokens": image.tokens, "image_pooled": image.pooled, "image_embedding": image.embedding,
            "text_tokens": text.tokens, "text_pooled": text.pooled, "text_embedding": text.embedding}


def max_differences(clip, reference) -> dict:
    _, images, ids, expected, _ = reference
    got = outputs_of(clip, images, ids)
    for name, value in got.items():
        assert value.shape == expected[name].shape and value.dtype == np.float32, name
    return {name: float(np.max(np.abs(np.asarray(got[name]) - expected[name]))) for name in expected}


@pytest.mark.parametrize("layout", ["hf_safetensors", "hf_bin", "hf_shards", "open_clip.pt", "open_clip_dir"])
def test_every_layout_matches_the_pytorch_model(reference, layout):
    """Token features, pooled outputs and projected embeddings of both towers equal PyTorch's to 1e-5,
    whichever file they were read from; sizes, heads and the logit scale come from the files."""
    root, _, _, _, logit_scale = reference
    kwargs = {"vision_heads": 4, "text_heads": 4} if layout == "open_clip.pt" else {}
    clip = load_clip(str(root / layout), **kwargs)
    assert (clip.image_size, clip.context_length) == (IMAGE, CONTEXT)
    assert clip.vision_spec.heads == 4 and clip.text_spec.heads == 4 and clip.vision_spec.embed_dim == 24
    assert clip.logit_scale == pytest.approx(logit_scale)
    diffs = max_differences(clip, reference)
    print(layout, {k: f"{v:.1e}" for k, v in diffs.items()})
    assert max(diffs.values()) < TOL, diffs


def test_token_api_and_shapes(reference):
    """`image_tokens` / `text_tokens` give float32 [B, 1 + grid**2, D_img] / [B, L, D_txt], and the split
    params drive the towers inside a user's jitted function, on rows shorter than the context too."""
    import jax
    from flax import nnx

    root, images, ids, expected, _ = reference
    clip = load_clip(str(root / "hf_safetensors"))
    tokens = clip.image_tokens(images)
    assert tokens.shape == (3, 1 + (IMAGE // 8) ** 2, 48) and tokens.dtype == np.float32
    assert clip.text_tokens(ids).shape == (3, CONTEXT, 32)

    @jax.jit
    def text_features(params, token_ids):
        out = nnx.merge(clip.graphdef, params).text(token_ids)
        return out.tokens, out.embedding
    short_tokens, short_embedding = text_features(clip.params, ids[:2, :10])
    np.testing.assert_allclose(short_tokens, expected["text_tokens"][:2, :10], atol=TOL)
    np.testing.assert_allclose(short_embedding, expected["text_embedding"][:2], atol=TOL)


def test_images_of_any_size_are_resized_and_centre_cropped(reference):
    """A uniform colour image is the same to CLIP at any size and aspect (CLIP-sized ones are not resized:
    the layout tests compare them to PyTorch)."""
    clip = load_clip(str(reference[0] / "hf_safetensors"))
    colour = np.array([0.2, 0.5, 0.9], np.float32)
    small = np.broadcast_to(colour, (3, IMAGE, IMAGE, 3))      # the reference batch's shape: compiled already
    wide = np.broadcast_to(colour, (3, 48, 80, 3))
    np.testing.assert_allclose(clip.image_tokens(wide), clip.image_tokens(small), atol=1e-5)


def test_half_precision_tensors_are_read_as_float32(tmp_path):
    """F16 and BF16 tensors (and non-contiguous torch tensors) read exactly as torch's float32 values."""
    from safetensors.torch import save_file
    torch.manual_seed(0)
    tensors = {"half": torch.randn(3, 4).half(), "bf16": torch.randn(4, 5).bfloat16(), "f32": torch.randn(2)}
    save_file(tensors, tmp_path / "t.safetensors")
    torch.save({**tensors, "strided": torch.randn(5, 6).bfloat16().t()[1:, ::2]}, tmp_path / "t.pt")
    for name, got in {**read_safetensors(str(tmp_path / "t.safetensors")),
                      **read_torch_archive(str(tmp_path / "t.pt"))}.items():
        assert got.dtype == np.float32
    archive = read_torch_archive(str(tmp_path / "t.pt"))
    for name, value in {**tensors, "strided": None}.items():
        if value is not None:
            np.testing.assert_array_equal(archive[name], value.float().numpy())
            np.testing.assert_array_equal(read_safetensors(str(tmp_path / "t.safetensors"))[name],
                                          value.float().numpy())
    assert archive["strided"].shape == (5, 3)


def test_missing_unknown_truncated_and_foreign_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_clip(str(tmp_path / "absent.pt"))
    with pytest.raises(CheckpointError, match="no CLIP weights in this directory"):
        load_clip(str(tmp_path))
    (tmp_path / "notes.pt").write_text("these are not weights, just a text file of some length")
    with pytest.raises(CheckpointError, match=r"notes\.pt: unknown format"):
        load_clip(str(tmp_path / "notes.pt"))
    from safetensors.torch import save_file
    save_file({"weight": torch.ones(64)}, tmp_path / "cut.safetensors")
    data = (tmp_path / "cut.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-16])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors: tensor 'weight' has data offsets"):
        load_clip(str(tmp_path / "cut.safetensors"))
    torch.save({"weight": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="neither a Hugging Face CLIPModel nor an open_clip"):
        load_clip(str(tmp_path / "other.pt"))


def _resaved(reference, tmp_path, change):
    """The HF safetensors state dict changed by `change(state)`, saved beside a copy of config.json."""
    from safetensors.torch import load_file, save_file
    root = reference[0] / "hf_safetensors"
    state = load_file(root / "model.safetensors")
    change(state)
    save_file(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((root / "config.json").read_text())
    return str(tmp_path)


def test_missing_unexpected_and_misshapen_tensors_are_named(reference, tmp_path_factory):
    missing = _resaved(reference, tmp_path_factory.mktemp("a"), lambda s: s.pop("vision_model.post_layernorm.bias"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing .*vision_model\.post_layernorm\.bias"):
        load_clip(missing)
    extra = _resaved(reference, tmp_path_factory.mktemp("b"),
                     lambda s: s.update({"vision_model.head.weight": torch.ones(3)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensor.*vision_model\.head\.weight"):
        load_clip(extra)
    key = "text_model.encoder.layers.1.mlp.fc2.weight"
    wrong = _resaved(reference, tmp_path_factory.mktemp("c"), lambda s: s.update({key: torch.ones(32, 41)}))
    with pytest.raises(CheckpointError, match=rf"shape mismatch: {key.replace('.', '[.]')} \(32, 41\)"):
        load_clip(wrong)


class _RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_asking_for_other_callables_is_refused_unrun(tmp_path):
    """A torch-style archive whose pickle would call os.system is refused, naming the callable, and the
    command never runs."""
    marker = tmp_path / "ran"
    with zipfile.ZipFile(tmp_path / "evil.pt", "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"w": _RunsACommand(marker)}, protocol=2))
        archive.writestr("evil/version", "3\n")
    with pytest.raises(UnsafePickleError, match=r"evil\.pt: the pickle asks for (posix|os)\.system"):
        load_clip(str(tmp_path / "evil.pt"))
    assert not marker.exists()


class _StorageRef:
    pass


class _TensorRecord:
    def __init__(self, size, stride):
        self.size, self.stride = size, stride

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (_StorageRef(), 0, self.size, self.stride, False, {})


class _ArchivePickler(pickle.Pickler):
    def persistent_id(self, obj):
        return ("storage", torch.FloatStorage, "0", "cpu", 4) if isinstance(obj, _StorageRef) else None


@pytest.mark.parametrize("size, stride", [((2, 2), (2, 1)), ((4, 4), (100, 1))])
def test_a_tensor_view_outside_its_storage_is_refused(tmp_path, size, stride):
    """Tensor records are bounds-checked against their storage (4 floats here) before any view is made."""
    import io
    buffer = io.BytesIO()
    _ArchivePickler(buffer, protocol=2).dump({"w": _TensorRecord(size, stride)})
    with zipfile.ZipFile(tmp_path / "t.pt", "w") as archive:
        archive.writestr("t/data.pkl", buffer.getvalue())
        archive.writestr("t/data/0", np.arange(4, dtype="<f4").tobytes())
    if size == (2, 2):
        np.testing.assert_array_equal(read_torch_archive(str(tmp_path / "t.pt"))["w"], [[0, 1], [2, 3]])
    else:
        with pytest.raises(CheckpointError, match=r"t\.pt: tensor of size \(4, 4\).*does not fit its storage"):
            read_torch_archive(str(tmp_path / "t.pt"))


def test_tokenize_reads_the_tokenizer_files_and_says_when_they_are_absent(reference, tmp_path):
    """`tokenize` pads to the text tower's context length; without tokenizer files it names what to add."""
    from comm_jax.models.clip.tokenizer import byte_symbols
    clip = load_clip(str(reference[0] / "hf_safetensors"))
    with pytest.raises(TokenizerFilesError, match="vocab.json"):
        clip.tokenize(["a film"])
    symbols = byte_symbols()
    vocab = {t: i for i, t in enumerate([*symbols, *(s + "</w>" for s in symbols), "<|startoftext|>",
                                         "<|endoftext|>"])}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    ids = load_clip(str(reference[0] / "hf_safetensors"), tokenizer=str(tmp_path)).tokenize(["Hi!"])
    assert ids.dtype == np.int32 and ids.shape == (1, CONTEXT)
    assert ids[0, :6].tolist() == [512, vocab["h"], vocab["i</w>"], vocab["!</w>"], 513, 0]


def test_a_vision_only_checkpoint_with_gelu_loads_alone(tmp_path):
    """A CLIPVisionModelWithProjection (its own config.json, exact GELU) gives the vision tower only."""
    torch.manual_seed(1)
    model = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
        hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, image_size=IMAGE,
        patch_size=8, projection_dim=24, hidden_act="gelu")).eval()
    model.save_pretrained(tmp_path)
    clip = load_clip(str(tmp_path))
    assert clip.text_spec is None and clip.vision_spec.activation == "gelu"
    images = np.random.default_rng(1).uniform(0, 1, (3, IMAGE, IMAGE, 3)).astype(np.float32)
    pixels = torch.from_numpy(((images - np.array(CLIP_MEAN)) / np.array(CLIP_STD)).astype(np.float32))
    with torch.no_grad():
        expected = model(pixel_values=pixels.permute(0, 3, 1, 2))
    got = clip.encode_images(images)
    np.testing.assert_allclose(got.tokens, expected.last_hidden_state.numpy(), atol=TOL)
    np.testing.assert_allclose(got.embedding, expected.image_embeds.numpy(), atol=TOL)
    with pytest.raises(ValueError, match="no text tower"):
        clip.text_tokens(np.zeros((1, 4), np.int32))
