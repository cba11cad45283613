"""How well a checkpoint's vocabulary covers the texts it is trained on.

`coverage` counts the unknown-token ids (`[UNK]`, `<unk>`) among the tokens the model is given
(after truncation, special tokens such as `[CLS]` not counted), and the texts whose tokens are mostly
unknown. An English checkpoint fine-tuned on Chinese text trains happily to a poor model, because
most of what it sees is `[UNK]`; `Coverage.warning` says so in one line and names a kind of
checkpoint that would read the text. Byte-level tokenizers (RoBERTa, ModernBERT) have no unknown
token: every text is covered and the figure is 0. Nothing here trains or writes.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import asdict, dataclass

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
