"""Build a CLIP-format BPE tokenizer locally, from any corpus of strings.

No pretrained tokenizer can be downloaded at run time, so the demo and the tests train one on report
text. The result is a plain ``vocab.json`` + ``merges.txt`` pair in the layout of OpenAI's CLIP
tokenizer, which ``transformers.CLIPTokenizer.from_pretrained(out_dir)`` (and therefore diffusers'
``StableDiffusionPipeline``) loads unchanged:

* text is NFC-normalised, whitespace-collapsed and lower-cased, then split with CLIP's word regex;
* each word is mapped through the GPT-2 byte->unicode table (``CLIPTokenizer`` does this before BPE, so
  the vocabulary must speak the same alphabet), and the last symbol of a word carries ``</w>``;
* the base vocabulary is every one of the 256 byte symbols, with and without ``</w>`` (512 entries,
  exactly as CLIP orders them), so any input text tokenizes without unknown tokens;
* learned merges follow, then ``<|startoftext|>`` and ``<|endoftext|>`` as the two highest ids
  (CLIP's convention; ``<|endoftext|>`` also pads).

There are no ``Ġ`` word-start markers (the tokenizer is not a GPT-2 style byte-level BPE): word
boundaries come from the pre-tokenizer split and the ``</w>`` end-of-word suffix only.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import CLIPTokenizer

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
# CLIP's word splitter (the same expression transformers' CLIPTokenizer uses); the special tokens are
# matched whole so they survive pre-tokenization.
CLIP_WORD_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
# 256 single-byte symbols, each alone and as a word end.
BASE_VOCAB_SIZE = 512


def _byte_symbols() -> list[str]:
    """The GPT-2/CLIP byte->unicode table in CLIP's vocabulary order (printable bytes first)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codepoints = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codepoints.append(256 + extra)
            extra += 1
    return [chr(c) for c in codepoints]


def _pre_tokenizer():
    normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    splitter = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_WORD_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    return normalizer, splitter


def build_clip_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    out_dir: str | Path,
    *,
    model_max_length: int = 77,
    min_frequency: int = 2,
):
    """Train a CLIP-compatible BPE on ``texts``, write it to ``out_dir`` and return the loaded
    ``transformers.CLIPTokenizer``.

    ``vocab_size`` is an upper bound on the final vocabulary (512 byte symbols + merges + 2 special
    tokens); a small corpus may run out of pairs seen ``min_frequency`` times first, so size the text
    encoder's embedding table from ``len(tokenizer)``, not from ``vocab_size``.
    """
    if vocab_size < BASE_VOCAB_SIZE + 2:
        raise ValueError(
            f"vocab_size={vocab_size}: a CLIP vocabulary needs at least {BASE_VOCAB_SIZE + 2} entries "
            f"(256 byte symbols with and without '{END_OF_WORD}', plus {BOS_TOKEN} and {EOS_TOKEN})"
        )
    if model_max_length < 3:
        raise ValueError(f"model_max_length={model_max_length}: must leave room for BOS, one token and EOS")
    if isinstance(texts, str):
        raise ValueError("texts: expected an iterable of strings, got a single string")
    corpus = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"texts[{i}]: expected str, got {type(text).__name__}")
        if text.strip():
            corpus.append(text)
    if not corpus:
        raise ValueError("texts: no non-empty strings to train the tokenizer on")

    symbols = _byte_symbols()
    num_merges = vocab_size - BASE_VOCAB_SIZE - 2
    normalizer, splitter = _pre_tokenizer()
    trainer_model = Tokenizer(models.BPE(end_of_word_suffix=END_OF_WORD, continuing_subword_prefix=""))
    trainer_model.normalizer = normalizer
    trainer_model.pre_tokenizer = splitter
    trainer = trainers.BpeTrainer(
        # Generous target: the trainer counts its own alphabet and we keep only the first merges.
        vocab_size=vocab_size + BASE_VOCAB_SIZE,
        min_frequency=min_frequency,
        initial_alphabet=symbols,
        end_of_word_suffix=END_OF_WORD,
        show_progress=False,
        special_tokens=[],
    )
    trainer_model.train_from_iterator(corpus, trainer=trainer)
    trained = json.loads(trainer_model.to_str())["model"]["merges"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained][:num_merges]

    vocab: dict[str, int] = {}
    for token in symbols + [s + END_OF_WORD for s in symbols]:
        vocab[token] = len(vocab)
    kept_merges = []
    for left, right in merges:
        merged = left + right
        # Merges are in creation order, so both halves are already known; a merge whose result is
        # already a base symbol adds nothing and is skipped.
        if merged not in vocab:
            vocab[merged] = len(vocab)
        kept_merges.append(f"{left} {right}")
    vocab[BOS_TOKEN] = len(vocab)
    vocab[EOS_TOKEN] = len(vocab)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(kept_merges) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": int(model_max_length),
        "do_lower_case": True,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN, "pad_token": EOS_TOKEN}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    return CLIPTokenizer.from_pretrained(str(out), local_files_only=True)
