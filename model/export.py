"""Convert a training checkpoint to Hugging Face Llama format:
`python -m model.export --checkpoint DIR_OR_URI --out DIR [--dtype bf16]`.

Writes `model.safetensors`, `config.json` (LlamaConfig), `generation_config.json` and the
tokenizer files, loadable with `transformers.LlamaForCausalLM.from_pretrained(DIR)` and
`AutoTokenizer` in transformers 4.4x-4.5x as well as 5.x (see `add_transformers4_fields`). The
checkpoint may be a root with a `latest` file or one tag folder, local or on object storage.
Module names already match Hugging Face's, so the conversion is a `model.` prefix; with tied
embeddings `lm_head.weight` is left out and `tie_word_embeddings` tells transformers to tie it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from model.checkpoint import META, resolve_tag_dir, safe_torch_load
from model.llama import ModelConfig
from model.tokenizer import EOS_TOKEN, PAD_TOKEN, SPECIAL_TOKENS
from pipeline.storage import ObjectStore

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_native_state(tag_dir: Path) -> dict[str, torch.Tensor]:
    """A full fp32 state dict from a DeepSpeed ZeRO checkpoint (any stage, any world size)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)


def to_hf_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Native names → Hugging Face names (a `model.` prefix; `lm_head` stays, unless tied)."""
    out = {}
    for name, tensor in state.items():
        if name == "lm_head.weight":
            if cfg.tie_embeddings:
                continue
            out[name] = tensor
        else:
            out[f"model.{name}"] = tensor
    # safetensors refuses shared storage: give every tensor its own contiguous copy.
    return {k: v.detach().to(dtype).contiguous().clone() for k, v in out.items()}


def hf_config(cfg: ModelConfig, dtype: str):
    from transformers import GenerationConfig, LlamaConfig

    eos, pad = SPECIAL_TOKENS.index(EOS_TOKEN), SPECIAL_TOKENS.index(PAD_TOKEN)
    config = LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.dim,
        intermediate_size=cfg.ffn_hidden,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_embeddings,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=eos,  # documents are separated by EOS, so it also opens a generation
        eos_token_id=eos,
        pad_token_id=pad,
        initializer_range=cfg.init_std,
        architectures=["LlamaForCausalLM"],
        torch_dtype=dtype,
    )
    return config, GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=pad)


def add_transformers4_fields(out: Path, cfg: ModelConfig) -> None:
    """transformers 5 writes two things that 4.x reads differently: `tokenizer_class:
    TokenizersBackend` (4.x AutoTokenizer raises: no such class) and RoPE's theta only under
    `rope_parameters` (4.x reads the top-level `rope_theta` and silently falls back to 10,000:
    wrong logits for presets with 500,000). Write the fields both majors read: the
    tokenizer class both know, `rope_theta` at the top level as well, `torch_dtype` beside `dtype`."""
    config_path, tokenizer_path = out / "config.json", out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["rope_theta"] = cfg.rope_theta
    config.setdefault("rope_scaling", None)
    if "dtype" in config:
        config.setdefault("torch_dtype", config["dtype"])
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer = json.loads(tokenizer_path.read_text())
    tokenizer["tokenizer_class"] = "PreTrainedTokenizerFast"
    tokenizer.pop("backend", None)  # 5.x's default; 4.x would pass it on as an unknown init argument
    tokenizer_path.write_text(json.dumps(tokenizer, indent=2, sort_keys=True) + "\n")


def export_hf(checkpoint: str, out_dir: str | Path, *, dtype: str = "fp32", store: ObjectStore | None = None) -> Path:
    from safetensors.torch import save_file
    from transformers import PreTrainedTokenizerFast

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tokenmill-export-") as staging:
        tag_dir = resolve_tag_dir(checkpoint, store, staging=Path(staging))
        meta = json.loads((tag_dir / META).read_text())
        cfg = ModelConfig(**meta["model"])
        with safe_torch_load():
            native = load_native_state(tag_dir)
        tensors = to_hf_state_dict(native, cfg, DTYPES[dtype])
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt", "tokenmill.step": str(meta["step"])})
        config, generation = hf_config(cfg, dtype={"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype])
        config.save_pretrained(out)
        generation.save_pretrained(out)
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_file=str(tag_dir / "tokenizer.json"), bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
            model_max_length=cfg.max_seq_len,
        )  # fmt: skip
        tokenizer.save_pretrained(out)
        add_transformers4_fields(out, cfg)
        (out / "tokenmill.json").write_text(json.dumps({**meta, "source_checkpoint": checkpoint}, indent=1))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.export", description="Checkpoint → Hugging Face Llama folder.")
    parser.add_argument("--checkpoint", required=True, help="checkpoint root (with `latest`) or tag folder; local or s3://")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    args = parser.parse_args(argv)
    try:
        out = export_hf(args.checkpoint, args.out, dtype=args.dtype)
    except (FileNotFoundError, ValueError) as exc:
        print(f"model.export: error: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
