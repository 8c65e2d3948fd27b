"""MM-IMDb feature extraction with real CLIP towers: a tiny randomly initialised `transformers.CLIPModel`
saved as a Hugging Face directory (safetensors, vocab.json, merges.txt) is loaded by `load_clip`, and the
token features written for each fake movie equal the PyTorch model's on the same poster pixels and on the
plot tokenized by `transformers.CLIPTokenizer` (to float16 rounding)."""

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
from input_pipeline import mmimdb_features  # noqa: E402

CONTEXT, IMAGE = fakes.TINY_CLIP_CONTEXT, fakes.TINY_CLIP_IMAGE
write_tiny_clip = fakes.write_tiny_clip


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
