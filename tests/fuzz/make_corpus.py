#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpus (tests/fuzz/corpus/): small valid
.npy, safetensors and config files, one of each kind loom reads. Only the
standard library: the bytes are laid out as NumPy and safetensors lay them
out. Run from anywhere; the files are committed, so this is only needed to
change them."""
import json
import os
import struct

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(kind, name, data):
    os.makedirs(os.path.join(HERE, kind), exist_ok=True)
    with open(os.path.join(HERE, kind, name), "wb") as f:
        f.write(data)


def npy(descr, shape, data, major=1):
    shape_text = "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
    header = "{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (descr, shape_text)
    prefix = 10 if major == 1 else 12
    header += " " * ((64 - (prefix + len(header) + 1) % 64) % 64) + "\n"
    length = struct.pack("<H" if major == 1 else "<I", len(header))
    return b"\x93NUMPY" + bytes([major, 0]) + length + header.encode() + data


write("npy", "f4_3.npy", npy("<f4", (3,), struct.pack("<3f", 1.5, -2.0, 0.25)))
write("npy", "f4_2x3_v2.npy", npy("<f4", (2, 3), struct.pack("<6f", *range(6)), major=2))
write("npy", "f8_2x2.npy", npy("<f8", (2, 2), struct.pack("<4d", 1, 2, 3, 4)))
write("npy", "i8_scalar.npy", npy("<i8", (), struct.pack("<q", 42)))
write("npy", "i4_4.npy", npy("<i4", (4,), struct.pack("<4i", -1, 0, 1, 7)))
write("npy", "b1_2x2.npy", npy("|b1", (2, 2), bytes([1, 0, 0, 1])))
write("npy", "f4_0x5.npy", npy("<f4", (0, 5), b""))


def safetensors(tensors, metadata=None):
    header, data = {}, b""
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


write("safetensors", "f32.safetensors", safetensors([("w", "F32", [2], struct.pack("<2f", 1, -1))]))
write("safetensors", "mixed.safetensors", safetensors([
    ("a.weight", "F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4)),
    ("ids", "I64", [3], struct.pack("<3q", 0, 5, -2)),
    ("mask", "BOOL", [2], bytes([1, 0])),
    ("h", "BF16", [2], bytes([0x80, 0x3f, 0x00, 0xc0])),
], {"format": "pt"}))
write("safetensors", "f16_f64.safetensors", safetensors([
    ("half", "F16", [3], bytes([0x00, 0x3c, 0x00, 0xc0, 0x00, 0x38])),
    ("double", "F64", [1], struct.pack("<d", 3.25)),
]))
write("safetensors", "empty.safetensors", safetensors([]))
# The shape of a loom training checkpoint: model.* and optim.* tensors, the metadata loom writes.
write("safetensors", "checkpoint.safetensors", safetensors([
    ("model.w", "F32", [2], struct.pack("<2f", 0.5, 0.25)),
    ("optim.step", "I64", [], struct.pack("<q", 3)),
    ("optim.w.exp_avg", "F32", [2], struct.pack("<2f", 0, 0)),
    ("optim.w.exp_avg_sq", "F32", [2], struct.pack("<2f", 0, 0)),
], {"config": "{}", "step": "3", "data_seed": "0", "data_offset": "12", "rng_seed": "1", "rng_offset": "0",
    "format": "loom-checkpoint-1"}))

CONFIGS = {
    "decoder.json": {"wrapper": "TransformerWrapper", "num_tokens": 256, "max_seq_len": 16,
                     "attn_layers": {"type": "Decoder", "dim": 8, "depth": 1, "heads": 2, "attn_dim_head": 4,
                                     "rotary_pos_emb": True, "ff_glu": True}},
    "encoder_alibi.json": {"wrapper": "TransformerWrapper", "num_tokens": 20, "max_seq_len": 0,
                           "attn_layers": {"type": "Encoder", "dim": 8, "depth": 2, "heads": 2, "alibi_pos_bias": True,
                                           "use_rmsnorm": True, "attn_kv_heads": 1, "attn_qk_norm": True}},
    "decoder_t5_selective.json": {"wrapper": "TransformerWrapper", "num_tokens": 30, "max_seq_len": 16,
                                  "attn_layers": {"type": "Decoder", "dim": 8, "depth": 1, "heads": 2,
                                                  "rel_pos_bias": True, "attn_selective": True,
                                                  "custom_layers": ["a", "f"], "residual_attn": True}},
    "continuous.json": {"wrapper": "ContinuousTransformerWrapper", "dim_in": 3, "dim_out": 2, "max_seq_len": 8,
                        "attn_layers": {"type": "Encoder", "dim": 8, "depth": 1, "heads": 2, "macaron": True}},
    "vit.json": {"wrapper": "ViTransformerWrapper", "image_size": 8, "patch_size": 4, "channels": 1, "num_classes": 3,
                 "attn_layers": {"type": "Encoder", "dim": 8, "depth": 1, "heads": 2, "sandwich_norm": True}},
    "xtransformer.json": {"wrapper": "XTransformer", "dim": 8, "enc_num_tokens": 10, "enc_max_seq_len": 8,
                          "enc_depth": 1, "enc_heads": 2, "dec_num_tokens": 10, "dec_max_seq_len": 9, "dec_depth": 1,
                          "dec_heads": 2, "dec_rotary_pos_emb": True, "dec_cross_rel_pos_bias": True},
}
for name, config in CONFIGS.items():
    write("config", name, (json.dumps(config, indent=1) + "\n").encode())
