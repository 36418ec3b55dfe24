"""A tokenizer for the benchmark's random-init checkpoint, so llama.cpp's converter accepts it.

The benchmark feeds token ids and reads token ids, so no system ever tokenizes text; but
``convert_hf_to_gguf.py`` copies a vocabulary into the GGUF and reads it from a SentencePiece
``tokenizer.model``. :func:`sentencepiece_model` writes one for any vocabulary size, laid out
like Llama's (``<unk>``, ``<s>``, ``</s>``, the 256 byte pieces ``<0x00>``..``<0xFF>``, then
plain pieces ``▁t<id>``), as a SentencePiece ``ModelProto`` encoded by hand (a few protobuf
fields; no sentencepiece or protobuf package needed to write it).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

# sentencepiece_model.proto: SentencePiece.Type and TrainerSpec.ModelType
NORMAL, UNKNOWN, CONTROL, BYTE = 1, 2, 3, 6
MODEL_TYPE_BPE = 2
SPECIALS = (("<unk>", UNKNOWN), ("<s>", CONTROL), ("</s>", CONTROL))
N_BYTE_PIECES = 256
MIN_VOCAB = len(SPECIALS) + N_BYTE_PIECES


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # protobuf encodes negative int32/int64 as 10-byte two's complement
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _len_field(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def _int_field(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(value)


def _float_field(field: int, value: float) -> bytes:
    return _key(field, 5) + struct.pack("<f", value)


def vocabulary(vocab_size: int) -> list[tuple[str, float, int]]:
    """``(piece, score, type)`` for every id: specials, byte pieces, then ``▁t<id>``."""
    if vocab_size < MIN_VOCAB:
        raise ValueError(f"vocab_size {vocab_size} < {MIN_VOCAB} (3 specials + 256 byte pieces)")
    pieces = [(p, 0.0, t) for p, t in SPECIALS]
    pieces += [(f"<0x{b:02X}>", 0.0, BYTE) for b in range(N_BYTE_PIECES)]
    pieces += [(f"\u2581t{i}", -float(i), NORMAL) for i in range(len(pieces), vocab_size)]
    return pieces


def sentencepiece_model(vocab_size: int) -> bytes:
    """A serialized SentencePiece ``ModelProto`` (BPE, byte fallback, identity normalizer) with
    ``vocab_size`` pieces; unk/bos/eos are ids 0/1/2 as in Llama's config."""
    body = b"".join(
        _len_field(1, _len_field(1, p.encode()) + _float_field(2, s) + _int_field(3, t))
        for p, s, t in vocabulary(vocab_size)
    )
    trainer = (
        _int_field(3, MODEL_TYPE_BPE)  # model_type
        + _int_field(4, vocab_size)  # vocab_size
        + _int_field(35, 1)  # byte_fallback
        + _int_field(40, 0)  # unk_id
        + _int_field(41, 1)  # bos_id
        + _int_field(42, 2)  # eos_id
        + _int_field(43, -1)  # pad_id: none
    )
    normalizer = _len_field(1, b"identity") + _int_field(3, 1)  # name, add_dummy_prefix
    return body + _len_field(2, trainer) + _len_field(3, normalizer)


def prepare_converter_input(hf_dir: Path, out: Path) -> Path:
    """A folder the converter reads: ``hf_dir``'s weights (linked, not copied), its
    ``config.json`` with ``rope_theta`` also at the top level (transformers 5 writes it only
    under ``rope_parameters``; the converter's transformers 4 reads the top level), and a
    ``tokenizer.model`` + ``tokenizer_config.json`` for its vocabulary size. ``hf_dir`` itself
    is left untouched, so the other systems load exactly what they loaded before."""
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: no config.json in the checkpoint")
    config = json.loads(config_path.read_text())
    if "vocab_size" not in config:
        raise ValueError(f"{config_path}: no vocab_size")
    rope = config.get("rope_parameters") or {}
    if "rope_theta" not in config and "rope_theta" in rope:
        config["rope_theta"] = rope["rope_theta"]
    out.mkdir(parents=True, exist_ok=True)
    weights = sorted(hf_dir.glob("*.safetensors")) + sorted(hf_dir.glob("*.safetensors.index.json"))
    if not weights:
        raise FileNotFoundError(f"{hf_dir}: no *.safetensors weights")
    for src in weights:
        link = out / src.name
        if not link.exists():
            os.symlink(src.resolve(), link)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "tokenizer.model").write_bytes(sentencepiece_model(int(config["vocab_size"])))
    tok_config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
    return out
