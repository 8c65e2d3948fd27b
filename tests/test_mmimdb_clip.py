"""MM-IMDb feature extraction with real CLIP towers: a tiny randomly initialised `transformers.CLIPModel`
saved as a Hugging Face directory (safetensors, vocab.json, merges.txt) is loaded by `load_clip`, and the
token features written for each fake movie equal the PyTorch model's on the same poster pixels and on the
plot tokenized by `transformers.CLIPTokenizer` (to float16 rounding)."""

import json
import os

import numpy as np
import pytest

os.environ.setdefault("USE_TF", "0")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tfds = pytest.importorskip("tensorflow_datasets")

import mmimdb_fakes as fakes  # noqa: E402
from comm_jax import extract_features  # noqa: E402
from comm_jax.models.clip import load_clip  # noqa: E402
from comm_jax.models.clip.tokenizer import END, START, byte_symbols  # noqa: E402
from input_pipeline import mmimdb_features  # noqa: E402

CONTEXT, IMAGE = 16, 32


def write_tiny_clip(directory):
    """A tiny CLIPModel with a byte-level vocabulary plus a few merges of the fake plots' words."""
    symbols = byte_symbols()
    merges = [("l", "o"), ("lo", "v"), ("lov", "e</w>"), ("s", "o"), ("so", "n"), ("son", "g</w>")]
    tokens = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges), START, END]
    vocab = {t: i for i, t in enumerate(tokens)}
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=CONTEXT, bos_token_id=vocab[START],
                         eos_token_id=vocab[END], pad_token_id=0),
        vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                           image_size=IMAGE, patch_size=8),
        projection_dim=16)
    model = transformers.CLIPModel(config).eval()
    model.save_pretrained(directory)
    with open(os.path.join(directory, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(directory, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return model


def test_extracted_features_are_the_pytorch_models_tokens(tmp_path):
    weights = str(tmp_path / "clip")
    model = write_tiny_clip(weights)
    manual, output = str(tmp_path / "manual"), str(tmp_path / "features")
    fakes.write_original(manual)
    clip = load_clip(weights)
    extract_features.extract(clip, output=output, manual_dir=manual, data_dir=str(tmp_path / "tfds"),
                             splits=("test",), batch_size=8, examples_per_shard=16, prepare_tfds=False)
    shard = mmimdb_features.read_shard(mmimdb_features.shard_path(os.path.join(output, "shards"), "test", 0, 1))

    builder = tfds.builder("mmimdb/original", data_dir=str(tmp_path / "tfds"))
    examples = builder.as_dataset(split="test", decoders={"image": tfds.decode.SkipDecoding()}).map(
        extract_features.poster_transform(IMAGE))
    by_id = {e["imdb_id"].decode(): e for e in examples.as_numpy_iterator()}
    order = [i.decode() if isinstance(i, bytes) else str(i) for i in shard["imdb_id"]]
    assert sorted(order) == sorted(by_id) and len(order) == fakes.COUNTS["test"]

    reference_tokenizer = transformers.CLIPTokenizer(os.path.join(weights, "vocab.json"),
                                                     os.path.join(weights, "merges.txt"))
    plots = [by_id[i]["plot"].decode() for i in order]
    encoded = reference_tokenizer(plots, padding="max_length", max_length=CONTEXT, truncation=True,
                                  return_tensors="pt")
    pixels = np.asarray(clip.preprocess(np.stack([by_id[i]["image"] for i in order])))
    with torch.no_grad():
        text = model.text_model(input_ids=encoded["input_ids"]).last_hidden_state.numpy()
        image = model.vision_model(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2)).last_hidden_state.numpy()

    lengths = encoded["attention_mask"].sum(1).numpy()
    np.testing.assert_array_equal(shard["text_length"], lengths)
    for row, length in enumerate(lengths):     # tokens up to the end-of-text token are the features
        np.testing.assert_allclose(shard["text"][row][:length].astype(np.float32), text[row, :length],
                                   rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(shard["image"].astype(np.float32), image, rtol=2e-3, atol=2e-3)
