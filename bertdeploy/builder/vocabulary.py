"""How well a checkpoint's vocabulary covers the texts it is trained on, and trimming it to what they use.

`coverage` counts the unknown-token ids (`[UNK]`, `<unk>`) among the tokens the model is given
(after truncation, special tokens such as `[CLS]` not counted), and the texts whose tokens are mostly
unknown. An English checkpoint fine-tuned on Chinese text trains happily to a poor model, because
most of what it sees is `[UNK]`; `Coverage.warning` says so in one line and names a kind of
checkpoint that would read the text. Byte-level tokenizers (RoBERTa, ModernBERT) have no unknown
token: every text is covered and the figure is 0.

`trim` writes a copy of a classifier that keeps only the vocabulary some texts use: their tokens,
the special and added tokens, and every single-character piece (so a word never seen still
tokenizes into its characters, not into `[UNK]`); the word-embedding rows follow, ids renumbered in
their old order. On the texts it was given the copy tokenizes and computes exactly as the
original; elsewhere the export's guard judges it. WordPiece (BERT), Unigram (SentencePiece:
XLM-R, e5) and BPE (RoBERTa, byte-level too) vocabularies; others are refused in one line.
Nothing here trains.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from bertdeploy.errors import ModelError

WARN_SHARE = 0.02  # warn when more than 2% of the tokens, or of the texts, are (mostly) unknown
MOSTLY = 0.5  # a text is "mostly unknown" when more than half its tokens are


@dataclass(frozen=True)
class Coverage:
    texts: int
    tokens: int  # the tokens the model reads, special tokens not counted
    unknown_tokens: int
    mostly_unknown_texts: int
    unknown_token: str | None  # None: the tokenizer has none (byte-level BPE)

    @property
    def unknown_share(self) -> float:
        return self.unknown_tokens / self.tokens if self.tokens else 0.0

    @property
    def mostly_unknown_share(self) -> float:
        return self.mostly_unknown_texts / self.texts if self.texts else 0.0

    def fields(self) -> dict:
        """The figures for metrics.json and the manifest."""
        return {**asdict(self), "unknown_share": round(self.unknown_share, 4),
                "mostly_unknown_share": round(self.mostly_unknown_share, 4)}

    def warning(self, model: str, texts: Iterable[str]) -> str | None:
        """One line when the vocabulary misses more than a few percent of the texts, else None."""
        if self.unknown_share <= WARN_SHARE and self.mostly_unknown_share <= WARN_SHARE:
            return None
        return (f"{self.unknown_share:.0%} of the training tokens are {self.unknown_token} under {model}'s tokenizer "
                f"({self.mostly_unknown_share:.0%} of the texts mostly {self.unknown_token}): its vocabulary does not "
                f"cover this text and the model cannot read it; fine-tune {suggestion(texts)} instead")


def coverage(tokenizer, input_ids: Iterable[list[int]]) -> Coverage:
    """Unknown tokens among `input_ids` (one list per text, as the tokenizer made them)."""
    unknown = tokenizer.unk_token_id
    special = set(tokenizer.all_special_ids) - {unknown}
    texts = tokens = unknown_tokens = mostly = 0
    for ids in input_ids:
        read = [i for i in ids if i not in special]
        missing = sum(i == unknown for i in read) if unknown is not None else 0
        texts, tokens, unknown_tokens = texts + 1, tokens + len(read), unknown_tokens + missing
        mostly += bool(read) and missing > MOSTLY * len(read)
    return Coverage(texts, tokens, unknown_tokens, mostly, tokenizer.unk_token if unknown is not None else None)


def suggestion(texts: Iterable[str], sample: int = 2000) -> str:
    """A kind of checkpoint that reads the texts' script (judged on the first `sample` texts)."""
    letters = [c for text in list(texts)[:sample] for c in text if c.isalpha()]
    han = sum(unicodedata.name(c, "").startswith("CJK UNIFIED") for c in letters)
    if letters and han > len(letters) / 2:
        return ("a Chinese checkpoint (bert-base-chinese, hfl/chinese-roberta-wwm-ext) or a multilingual one "
                "(xlm-roberta-base, intfloat/multilingual-e5-small)")
    return ("a checkpoint trained on this language, or a multilingual one (xlm-roberta-base, "
            "bert-base-multilingual-cased)")


@dataclass(frozen=True)
class Trim:
    family: str  # WordPiece, Unigram or BPE
    kept: int  # tokens kept
    original: int  # tokens before
    seen: int  # of the kept: tokens the texts use (BPE: with the merges that build them)
    texts: int

    def fields(self) -> dict:
        return {"trimmed": True, **asdict(self), "fallback": "single characters"}


def trim(model_dir: Path, texts: list[str], pairs: list[str] | None, destination: Path,
         allow_pickle: bool = False) -> Trim:
    """Write into `destination` the classifier of `model_dir` with only the vocabulary `texts` (and `pairs`) use,
    plus the special tokens and single characters; the embedding rows follow, renumbered in order."""
    import torch
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from bertdeploy.builder.pretrained import load_classifier

    tokenizer = AutoTokenizer.from_pretrained(model_dir, use_fast=True)
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    family, vocab = state["model"]["type"], state["model"].get("vocab")
    if family not in _PIECES:
        raise ModelError(f"{model_dir}: cannot trim a {family} vocabulary (WordPiece, Unigram and BPE can be); "
                         "export without --trim-vocabulary")
    pieces = _PIECES[family](vocab)  # piece by id
    seen = {i for ids in tokenizer(texts, pairs, verbose=False)["input_ids"] for i in ids}
    seen |= set(tokenizer.all_special_ids) | {t["id"] for t in state["added_tokens"]}
    if family == "BPE":
        seen |= _merge_ancestors(seen, pieces, state["model"]["merges"])
    fallback = {i for i, piece in enumerate(pieces)  # single characters, and the byte pieces of a byte fallback
                if len(piece.removeprefix(_prefix(state))) == 1 or (len(piece) == 6 and piece.startswith("<0x"))}
    kept = sorted(i for i in seen | fallback if i < len(pieces))
    new_id = {old: new for new, old in enumerate(kept)}
    _renumber(state, family, pieces, kept, new_id)
    backend = type(tokenizer.backend_tokenizer).from_str(json.dumps(state))

    model = load_classifier(model_dir, allow_pickle)
    if hasattr(model, "keep_tokens"):  # a static student: its vectors and their weights
        model.keep_tokens(kept)
    else:
        old = model.get_input_embeddings()
        pad = new_id.get(model.config.pad_token_id) if model.config.pad_token_id is not None else None
        embedding = torch.nn.Embedding(len(kept), old.embedding_dim, padding_idx=pad)
        embedding.weight.data = old.weight.data[torch.tensor(kept)].clone()
        model.set_input_embeddings(embedding)
        model.config.vocab_size = len(kept)
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id"):
        if getattr(model.config, name, None) is not None:
            setattr(model.config, name, new_id.get(getattr(model.config, name)))
    model.save_pretrained(destination, safe_serialization=True)
    PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=tokenizer.model_max_length,
                            padding_side=tokenizer.padding_side, **tokenizer.special_tokens_map
                            ).save_pretrained(destination)
    return Trim(family, len(kept), len(pieces), len(seen), len(texts))


def _by_id(vocab: dict[str, int]) -> list[str]:
    pieces = [""] * (max(vocab.values()) + 1)
    for piece, i in vocab.items():
        pieces[i] = piece
    return pieces


_PIECES = {"WordPiece": _by_id, "BPE": _by_id, "Unigram": lambda vocab: [piece for piece, _ in vocab]}


def _prefix(state: dict) -> str:
    """What marks a piece that continues a word (WordPiece's `##`), so `##a` counts as a single character."""
    return state["model"].get("continuing_subword_prefix") or ""


def _merge_ancestors(seen: set[int], pieces: list[str], merges: list) -> set[int]:
    """The pieces the BPE merges pass through on their way to the `seen` ones: a word is tokenized alike only if
    every intermediate merge result survives."""
    ids = {piece: i for i, piece in enumerate(pieces)}
    parents: dict[str, tuple[str, str]] = {}
    for merge in merges:
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        parents.setdefault(left + right, (left, right))
    found, stack = set(), [pieces[i] for i in seen if i < len(pieces)]
    while stack:
        for part in parents.get(stack.pop(), ()):
            if part in ids and ids[part] not in seen | found:
                found.add(ids[part])
                stack.append(part)
    return found


def _renumber(state: dict, family: str, pieces: list[str], kept: list[int], new_id: dict[int, int]) -> None:
    """Rewrite the tokenizer state (a tokenizer.json) in place for the kept ids."""
    model = state["model"]
    if family == "Unigram":
        model["vocab"] = [model["vocab"][i] for i in kept]
        if model.get("unk_id") is not None:
            model["unk_id"] = new_id[model["unk_id"]]
    else:
        model["vocab"] = {pieces[i]: new for new, i in enumerate(kept)}
    if family == "BPE":
        keep = set(model["vocab"])
        model["merges"] = [m for m in model["merges"]
                           if {*(parts := m.split(" ", 1) if isinstance(m, str) else m), "".join(parts)} <= keep]
    for token in state["added_tokens"]:
        token["id"] = new_id[token["id"]]
    if state.get("padding"):
        state["padding"]["pad_id"] = new_id[state["padding"]["pad_id"]]
    _renumber_ids(state.get("post_processor"), new_id)


def _renumber_ids(node, new_id: dict[int, int]) -> None:
    """The special tokens' ids in a post-processor: TemplateProcessing's `ids` lists, BERT/RoBERTa's
    `[token, id]` pairs, and those of a Sequence of processors."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "ids" and isinstance(value, list):
                node[key] = [new_id[i] for i in value]
            elif key in ("sep", "cls") and isinstance(value, list) and len(value) == 2:
                value[1] = new_id[value[1]]
            else:
                _renumber_ids(value, new_id)
    elif isinstance(node, list):
        for value in node:
            _renumber_ids(value, new_id)
