"""CLIP's BPE tokenizer from local files gives Hugging Face CLIPTokenizer's ids (case, punctuation,
contractions, accents, digits, emoji), from `vocab.json` + `merges.txt` and from open_clip's `.txt.gz`."""

import gzip
import json
import os

import numpy as np
import pytest

os.environ.setdefault("USE_TF", "0")     # transformers would import tensorflow (seconds) for nothing here
transformers = pytest.importorskip("transformers")

from comm_jax.models.clip.tokenizer import END, START, ClipTokenizer, TokenizerFilesError, byte_symbols  # noqa: E402

WORDS = ["the", "a", "photo", "of", "dog", "dogs", "cat", "hello", "world", "film", "poster", "don", "stop",
         "believ", "ing", "caf", "na", "ve", "12", "!!", "...", "'s", "'t"]
TEXTS = ["Hello, World!", "A PHOTO   of\ttwo dogs' toys...", "the cat's film poster (1999)",
         "don't stop-believing!!", "naïve café Über 4.5% ☃ 🙂", "  ", "thedogthecat", "x" * 40]


def merges_for(words):
    """Merges that build each word left to right, in the order first needed, each making a new token; the
    last piece of a word carries `</w>` so it is a whole word."""
    merges, made = [], set()
    for word in words:
        symbols = [byte_symbols()[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        current = symbols[0]
        for nxt in symbols[1:]:
            if current + nxt not in made:
                merges.append((current, nxt))
                made.add(current + nxt)
            current += nxt
    return merges


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizer")
    merges = merges_for(WORDS)
    symbols = byte_symbols()
    tokens = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges), START, END]
    assert len(set(tokens)) == len(tokens)
    (root / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    lines = ["#version: 0.2", *(" ".join(m) for m in merges)]
    (root / "merges.txt").write_text("\n".join(lines) + "\n")
    with gzip.open(root / "bpe_simple_vocab_16e6.txt.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return root


def test_ids_match_hugging_face(files):
    reference = transformers.CLIPTokenizer(str(files / "vocab.json"), str(files / "merges.txt"))
    ours = ClipTokenizer.from_hf_files(str(files / "vocab.json"), str(files / "merges.txt"), context_length=24)
    expected = reference(TEXTS, padding="max_length", max_length=24, truncation=True)
    got = ours(TEXTS)
    assert got.dtype == np.int32 and got.shape == (len(TEXTS), 24)
    for row, (ids, mask) in enumerate(zip(expected["input_ids"], expected["attention_mask"])):
        real = [i for i, m in zip(ids, mask) if m]
        assert got[row].tolist() == real + [0] * (24 - len(real)), TEXTS[row]
    assert len(set(got[1].tolist())) > 5   # the vocabulary's merges are really exercised
    assert reference.convert_ids_to_tokens(got[0, :4].tolist())[1] == "hello</w>"


def test_long_texts_are_truncated_keeping_the_end_token(files):
    ours = ClipTokenizer.from_hf_files(str(files / "vocab.json"), str(files / "merges.txt"), context_length=6)
    row = ours(["the dog the cat the dog the cat"])[0]
    assert row[0] == ours.start_id and row[-1] == ours.end_id and ours.end_id == row.max()
    assert ours(["the dog the cat the dog the cat"], context_length=77)[0, 1:5].tolist() == row[1:5].tolist()


def test_open_clip_bpe_file_gives_the_same_ids(files):
    hf = ClipTokenizer.from_hf_files(str(files / "vocab.json"), str(files / "merges.txt"))
    open_clip = ClipTokenizer.from_open_clip_bpe(str(files / "bpe_simple_vocab_16e6.txt.gz"))
    np.testing.assert_array_equal(hf(TEXTS), open_clip(TEXTS))


def test_missing_tokenizer_files_are_named(tmp_path):
    with pytest.raises(TokenizerFilesError, match="vocab.json: tokenizer file not found"):
        ClipTokenizer.from_hf_files(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
