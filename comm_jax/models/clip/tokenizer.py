"""CLIP's byte-level BPE tokenizer, read from local files: Hugging Face `vocab.json` + `merges.txt`, or
open_clip's `bpe_simple_vocab_16e6.txt.gz`. Text is cleaned (HTML entities, NFC, whitespace) and
lowercased, split into words, letter runs, single digits and punctuation runs, then BPE-merged."""

from __future__ import annotations

import gzip
import html
import json
import os
import unicodedata
from typing import Iterator, Sequence

import numpy as np

START, END = "<|startoftext|>", "<|endoftext|>"
CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
# open_clip's merges file holds more merges than CLIP's vocabulary uses: its first 48,894 (after the header)
OPEN_CLIP_MERGES = 49152 - 256 - 2


class TokenizerFilesError(FileNotFoundError):
    """The tokenizer's vocabulary or merges files are not where they were looked for."""


def byte_symbols() -> list[str]:
    """One printable character per byte value: printable Latin-1 bytes stand for themselves, the others
    for characters from U+0100 on, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = [], 0
    for b in range(256):
        if b in keep:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def clean(text: str) -> str:
    """HTML entities resolved (twice, as CLIP), NFC, control characters dropped, whitespace runs -> one space,
    lowercase."""
    text = unicodedata.normalize("NFC", html.unescape(html.unescape(text)))
    text = "".join(c for c in text if c.isspace() or unicodedata.category(c) != "Cc")
    return " ".join(text.split()).lower()


def _kind(char: str) -> str:
    if char.isspace():
        return "space"
    category = unicodedata.category(char)
    return "letter" if category[0] == "L" else "number" if category[0] == "N" else "other"


def pieces(text: str) -> Iterator[str]:
    """CLIP's pre-tokenisation of cleaned text: the special tokens, contractions, runs of letters, single
    numeric characters, runs of anything else but whitespace; whitespace separates and is dropped."""
    i, n = 0, len(text)
    while i < n:
        kind = _kind(text[i])
        if kind == "space":
            i += 1
            continue
        special = next((s for s in (START, END) if text.startswith(s, i)), None)
        contraction = next((c for c in CONTRACTIONS if text.startswith(c, i)), None)
        if special or contraction:
            j = i + len(special or contraction)
        elif kind == "number":
            j = i + 1
        else:
            j = i + 1
            while j < n and _kind(text[j]) == kind:
                j += 1
        yield text[i:j]
        i = j


class ClipTokenizer:
    """Text -> CLIP token ids: `[<|startoftext|>, ..., <|endoftext|>]` padded with 0 (truncated keeping
    the end token) to the context length."""

    def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]], context_length: int = 77):
        for token in (START, END):
            if token not in vocab:
                raise ValueError(f"the vocabulary lacks the special token {token}")
        self.vocab = vocab
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.context_length = context_length
        self.byte_symbol = byte_symbols()
        self.start_id, self.end_id = vocab[START], vocab[END]
        self.cache: dict[str, list[int]] = {START: [self.start_id], END: [self.end_id]}

    @classmethod
    def from_hf_files(cls, vocab_json: str, merges_txt: str, context_length: int = 77) -> "ClipTokenizer":
        """From a Hugging Face CLIP tokenizer's `vocab.json` and `merges.txt` (first line `#version: ...`)."""
        for path in (vocab_json, merges_txt):
            if not os.path.isfile(path):
                raise TokenizerFilesError(f"{path}: tokenizer file not found")
        with open(vocab_json, encoding="utf-8") as f:
            vocab = json.load(f)
        with open(merges_txt, encoding="utf-8") as f:
            lines = f.read().split("\n")
        lines = [line for line in lines[1 if lines and lines[0].startswith("#version") else 0:] if line.strip()]
        return cls(vocab, [tuple(line.split()) for line in lines], context_length)

    @classmethod
    def from_open_clip_bpe(cls, bpe_gz: str, context_length: int = 77) -> "ClipTokenizer":
        """From open_clip's / OpenAI's `bpe_simple_vocab_16e6.txt.gz`: the vocabulary is the byte symbols,
        the same with `</w>`, one token per merge, then the two special tokens."""
        if not os.path.isfile(bpe_gz):
            raise TokenizerFilesError(f"{bpe_gz}: tokenizer file not found")
        with gzip.open(bpe_gz, "rt", encoding="utf-8") as f:
            lines = [line for line in f.read().split("\n")[1:] if line.strip()][:OPEN_CLIP_MERGES]
        merges = [tuple(line.split()) for line in lines]
        symbols = byte_symbols()
        tokens = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges), START, END]
        return cls({t: i for i, t in enumerate(tokens)}, merges, context_length)

    def bpe(self, piece: str) -> list[int]:
        """Token ids of one pre-tokenised piece: its UTF-8 bytes as symbols (the last marked `</w>`), merged
        pair by pair, lowest merge rank first."""
        if piece in self.cache:
            return self.cache[piece]
        symbols = [self.byte_symbol[b] for b in piece.encode("utf-8")]
        word = symbols[:-1] + [symbols[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(a, b) for a, b in zip(word, word[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        ids = [self.vocab.get(token, self.end_id) for token in word]
        if len(self.cache) < 100_000:
            self.cache[piece] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without the start and end tokens."""
        return [i for piece in pieces(clean(text)) for i in self.bpe(piece)]

    def __call__(self, texts: Sequence[str] | str, context_length: int | None = None) -> np.ndarray:
        """int32 `[len(texts), context_length]`."""
        length = context_length or self.context_length
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = np.zeros((len(texts), length), np.int32)
        for row, text in enumerate(texts):
            ids = [self.start_id, *self.encode(text)[: length - 2], self.end_id]
            out[row, : len(ids)] = ids
        return out
