"""Named model sizes. Vocabulary size comes from the tokenizer at training time; the value
here is the default that the parameter counts in the names assume."""

from __future__ import annotations

from dataclasses import replace

from model.llama import ModelConfig

PRESETS: dict[str, ModelConfig] = {
    # ≈5M: CPU tests and the CPU benchmark.
    "tiny": ModelConfig(vocab_size=8192, dim=256, n_layers=4, n_heads=8, n_kv_heads=4, ffn_hidden=688, max_seq_len=1024),
    # ≈124M, GPT-2 small's shape with Llama blocks.
    "125m": ModelConfig(vocab_size=50304, dim=768, n_layers=12, n_heads=12, n_kv_heads=12, ffn_hidden=2048, max_seq_len=2048),
    # ≈334M
    "350m": ModelConfig(vocab_size=50304, dim=1024, n_layers=24, n_heads=16, n_kv_heads=8, ffn_hidden=2816, max_seq_len=2048),
    # ≈1.1B, Llama 3.2 1B's shape.
    "1b": ModelConfig(vocab_size=50304, dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_hidden=8192, max_seq_len=2048, rope_theta=500000.0),
}


def model_config(preset: str, **overrides) -> ModelConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    unknown = set(overrides) - set(ModelConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown model config keys {sorted(unknown)}")
    return replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
