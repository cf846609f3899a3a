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

The merges are learned here (:func:`learn_merges`), not by ``tokenizers``' ``BpeTrainer``: that trainer breaks
ties between equally frequent pairs by ids that follow a per-process hash order, so the same corpus gave
different merges in different processes (and with them different token ids and a different tiny generator).
Here the most frequent pair wins and a tie goes to the smallest ``(left, right)`` in string order: the same
corpus gives the same files in any process.
"""
from __future__ import annotations

import heapq
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, normalizers, pre_tokenizers
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
    words = Counter(piece for text in corpus
                    for piece, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)))
    merges = learn_merges(words, num_merges, min_frequency)

    vocab: dict[str, int] = {}
    for token in symbols + [s + END_OF_WORD for s in symbols]:
        vocab[token] = len(vocab)
    kept_merges = []
    for left, right in merges:
        merged = left + right
        # Merges are in creation order, so both halves are already known; a merge whose result is
        # already in the vocabulary ('ab' + 'c' after 'a' + 'bc') adds no entry.
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


def learn_merges(word_counts: dict[str, int], num_merges: int, min_frequency: int = 2) -> list[tuple[str, str]]:
    """BPE merges over ``word_counts`` (pre-tokenized words -> occurrences), most frequent pair first, ties to
    the smallest ``(left, right)``; stops after ``num_merges`` or when no pair occurs ``min_frequency`` times.
    A word's last symbol carries ``</w>``; a merge joins non-overlapping occurrences left to right."""
    words = [[*w[:-1], w[-1] + END_OF_WORD] for w in sorted(word_counts) if w]
    counts = [word_counts[w] for w in sorted(word_counts) if w]
    pair_counts: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = {}
    for i, symbols in enumerate(words):
        for pair in zip(symbols, symbols[1:]):
            pair_counts[pair] += counts[i]
            where.setdefault(pair, set()).add(i)
    heap = [(-c, pair) for pair, c in pair_counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    while heap and len(merges) < num_merges:
        negative, pair = heapq.heappop(heap)
        if -negative != pair_counts.get(pair, 0):
            continue   # a stale entry: the pair's count changed since it was pushed
        if -negative < min_frequency:
            break
        merges.append(pair)
        changed = set()
        for i in sorted(where.pop(pair, ())):
            old = words[i]
            for p in zip(old, old[1:]):
                pair_counts[p] -= counts[i]
                changed.add(p)
            new, j = [], 0
            while j < len(old):
                if j + 1 < len(old) and (old[j], old[j + 1]) == pair:
                    new.append(old[j] + old[j + 1])
                    j += 2
                else:
                    new.append(old[j])
                    j += 1
            words[i] = new
            for p in zip(new, new[1:]):
                pair_counts[p] += counts[i]
                where.setdefault(p, set()).add(i)
                changed.add(p)
        for p in changed:
            if pair_counts[p] > 0:
                heapq.heappush(heap, (-pair_counts[p], p))
            else:
                pair_counts.pop(p, None)
    return merges
