"""CLIP's byte-level BPE tokenizer (Radford et al. 2021, sec. 2.4), in pure Python.

Text -> cleanup -> lowercase -> pre-split into words -> each word's UTF-8 bytes as printable
characters -> byte-pair merges from ``bpe_simple_vocab_16e6.txt.gz`` (``</w>`` marks a word end)
-> ids. A sequence is ``[SOT] + ids + [EOT]``, zero-padded to the context length (77).

The vocabulary file is data, not code; its path is given by the caller (the weights manager owns it).

Deliberate differences from the reference tokenizer, all limited to unusual text:

* Cleanup: the reference runs ``ftfy.fix_text``; ``ftfy`` is not a dependency here, so
  :func:`fix_text` does the parts of it that change well-formed text (NFC, curly quotes -> straight,
  Latin ligatures and full-width forms -> plain letters, C1 controls read as Windows-1252, terminal
  escape and control characters removed, line breaks). It does not repair mojibake
  (``"cafÃ©"`` stays as it is; ftfy would give ``"café"``).
* Pre-split: the reference pattern needs the ``regex`` module's ``\\p{L}`` / ``\\p{N}`` classes; the
  stdlib ``re`` has none, so :func:`split_words` is a small scanner using ``unicodedata`` categories.
  It yields the same pieces; letters/numbers follow the Unicode version of this Python's
  ``unicodedata``, which may differ from the ``regex`` module's for characters added recently.
"""
from __future__ import annotations

import gzip
import html
import re
import unicodedata
from functools import lru_cache
from os import PathLike
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

CONTEXT_LENGTH = 77
START_OF_TEXT = "<|startoftext|>"
END_OF_TEXT = "<|endoftext|>"
WORD_END = "</w>"
NUMBER_OF_MERGES = 49152 - 256 - 2  # the released vocabulary: 49,408 = 2 x 256 bytes + merges + 2 specials


class PromptTooLongError(ValueError):
    """A prompt needs more than the context length; pass ``truncate=True`` to cut it."""


# -- byte <-> printable character table ----------------------------------------------------------------
@lru_cache(maxsize=1)
def byte_to_char() -> dict[int, str]:
    """Each of the 256 byte values as one printable character, so BPE works on ``str`` without
    whitespace/control characters: printable Latin-1 bytes stand for themselves, the other 68 are
    shifted to U+0100 and up in byte order. Dict order = vocabulary order of the 256 base tokens."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


# -- cleanup ------------------------------------------------------------------------------------------
_TERMINAL_ESCAPE = re.compile("\x1b\\[[0-9;]*[A-Za-z]")
_SINGLE_QUOTES = re.compile("[\u02bc\u2018-\u201b]")
_DOUBLE_QUOTES = re.compile("[\u201c-\u201f]")
_LINE_BREAKS = re.compile("\r\n|[\r\u2028\u2029\u0085]")
_LIGATURES = "\u0132\u0133\u013f\u0140\u0149\u01c4\u01c5\u01c6\u01c7\u01c8\u01c9\u01ca\u01cb\u01cc" \
             "\u01f1\u01f2\u01f3\ufb00\ufb01\ufb02\ufb03\ufb04\ufb05\ufb06"
# Control characters that carry no text (tab, newline, form feed, CR are kept: they are whitespace).
_CONTROL = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f\u206a-\u206f\ufeff\ufff9-\ufffc]")


def _windows_1252(char: str) -> str:
    try:
        return bytes([ord(char)]).decode("cp1252")
    except UnicodeDecodeError:  # 0x81, 0x8d, 0x8f, 0x90, 0x9d are undefined there
        return char


def fix_text(text: str) -> str:
    """The well-formed-text part of ftfy's default ``fix_text`` (see the module docstring)."""
    text = _TERMINAL_ESCAPE.sub("", text)
    text = re.sub("[\x80-\x9f]", lambda m: _windows_1252(m.group()), text)
    text = "".join(unicodedata.normalize("NFKC", c)
                   if c in _LIGATURES or "\uff01" <= c <= "\uffee" or c == "\u3000" else c for c in text)
    text = _DOUBLE_QUOTES.sub('"', _SINGLE_QUOTES.sub("'", text))
    text = _LINE_BREAKS.sub("\n", text)
    text = _CONTROL.sub("", text)
    return unicodedata.normalize("NFC", text)


def clean_text(text: str) -> str:
    """Reference order: fix, HTML-unescape twice (prompts copied from web pages may be double-escaped),
    strip, collapse whitespace runs to one space, lowercase."""
    text = html.unescape(html.unescape(fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip().lower()


# -- pre-split --------------------------------------------------------------------------------------
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
_SPECIALS = (START_OF_TEXT, END_OF_TEXT)
_CASE_FOLD = {"\u017f": "s"}  # long s folds to s under the reference's case-insensitive match


def _char_class(char: str) -> str:
    if char.isspace():
        return "space"
    category = unicodedata.category(char)[0]
    return {"L": "letter", "N": "number"}.get(category, "other")


def _matches_at(text: str, start: int, literal: str) -> bool:
    piece = text[start:start + len(literal)]
    return len(piece) == len(literal) and "".join(_CASE_FOLD.get(c, c) for c in piece) == literal


def split_words(text: str) -> list[str]:
    """Pieces of ``text`` as the reference pattern finds them, trying at each position in this order:
    a special token, a contraction (``'s 't 're 've 'm 'll 'd``), a run of letters, ONE number
    character, a run of anything that is neither space, letter nor number. Whitespace is dropped.
    A contraction is only found where a piece starts: inside a punctuation run the apostrophe is
    punctuation (``"?'s"`` -> ``"?'"``, ``"s"``), as in the reference."""
    pieces = []
    position = 0
    while position < len(text):
        char = text[position]
        kind = _char_class(char)
        if kind == "space":
            position += 1
            continue
        literal = next((s for s in _SPECIALS + _CONTRACTIONS if _matches_at(text, position, s)), None)
        if literal is not None:
            end = position + len(literal)
        elif kind == "number":
            end = position + 1
        else:  # a run of letters, or a run of "other"
            end = position + 1
            while end < len(text) and _char_class(text[end]) == kind:
                end += 1
        pieces.append(text[position:end])
        position = end
    return pieces


# -- BPE ---------------------------------------------------------------------------------------------
def read_merges(vocab_path: str | PathLike) -> list[tuple[str, str]]:
    """The merge rules of the released vocabulary, best first (the first line is a version header)."""
    with gzip.open(Path(vocab_path), "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:1 + NUMBER_OF_MERGES]]
    if len(merges) != NUMBER_OF_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{vocab_path} is not CLIP's bpe_simple_vocab_16e6.txt.gz "
                         f"(expected {NUMBER_OF_MERGES} merge lines after the header)")
    return merges


class CLIPTokenizer:
    """``CLIPTokenizer(vocab_path).tokenize(["a smiling woman"])`` -> int32 array (1, 77)."""

    def __init__(self, vocab_path: str | PathLike):
        self.vocab_path = Path(vocab_path)
        merges = read_merges(self.vocab_path)
        base = list(byte_to_char().values())
        tokens = base + [c + WORD_END for c in base] + ["".join(m) for m in merges] + list(_SPECIALS)
        self.token_to_id = {token: index for index, token in enumerate(tokens)}
        self.id_to_token = tokens
        self.merge_rank = {pair: rank for rank, pair in enumerate(merges)}
        self.start_id = self.token_to_id[START_OF_TEXT]
        self.end_id = self.token_to_id[END_OF_TEXT]
        self.pad_id = 0
        self._char_to_byte = {c: b for b, c in byte_to_char().items()}
        self._word_cache: dict[str, tuple[str, ...]] = {s: (s,) for s in _SPECIALS}

    @property
    def vocab_size(self) -> int:
        return len(self.id_to_token)

    def bpe(self, word: str) -> tuple[str, ...]:
        """Byte-pair merge one pre-split word (already mapped to byte characters): start from single
        characters, the last one carrying ``</w>``; repeatedly merge every occurrence (left to right)
        of the adjacent pair with the best rank, until no adjacent pair has a rank."""
        cached = self._word_cache.get(word)
        if cached is not None:
            return cached
        parts = list(word[:-1]) + [word[-1] + WORD_END]
        while len(parts) > 1:
            ranked = [(self.merge_rank[pair], pair) for pair in zip(parts, parts[1:]) if pair in self.merge_rank]
            if not ranked:
                break
            _, (first, second) = min(ranked)
            merged = []
            index = 0
            while index < len(parts):
                if index + 1 < len(parts) and parts[index] == first and parts[index + 1] == second:
                    merged.append(first + second)
                    index += 2
                else:
                    merged.append(parts[index])
                    index += 1
            parts = merged
        result = tuple(parts)
        self._word_cache[word] = result
        return result

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without start/end tokens."""
        table = byte_to_char()
        ids = []
        for piece in split_words(clean_text(text)):
            word = "".join(table[b] for b in piece.encode("utf-8"))
            ids.extend(self.token_to_id[token] for token in self.bpe(word))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``: a leading SOT and the final EOT with the padding after it are dropped, word
        ends become spaces. The result is the cleaned, lowercased text, not the original."""
        ids = [int(i) for i in ids]
        if self.end_id in ids:
            ids = ids[:len(ids) - 1 - ids[::-1].index(self.end_id)]
        if ids[:1] == [self.start_id]:
            ids = ids[1:]
        data = bytearray()
        for token in (self.id_to_token[i] for i in ids):
            word_end = token.endswith(WORD_END)
            data.extend(self._char_to_byte[c] for c in (token[:-len(WORD_END)] if word_end else token))
            if word_end:
                data.extend(b" ")
        return data.decode("utf-8", errors="replace").strip()

    def tokenize(self, texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH,
                 truncate: bool = False) -> np.ndarray:
        """``[SOT] + encode(text) + [EOT]`` per text, zero-padded to ``context_length``: int32 (N, L).

        A text that does not fit raises :class:`PromptTooLongError`, unless ``truncate=True``: then
        the first ``context_length`` ids are kept and the last of them is replaced by EOT (the
        model pools at EOT, so it must stay)."""
        if isinstance(texts, str):
            texts = [texts]
        result = np.zeros((len(texts), context_length), dtype=np.int32)
        for row, text in enumerate(texts):
            ids = [self.start_id] + self.encode(text) + [self.end_id]
            if len(ids) > context_length:
                if not truncate:
                    raise PromptTooLongError(
                        f"prompt {text!r} is {len(ids)} tokens with start/end, more than CLIP's context of "
                        f"{context_length}; shorten it or tokenize with truncate=True")
                ids = ids[:context_length]
                ids[-1] = self.end_id
            result[row, :len(ids)] = ids
        return result
