from __future__ import annotations

import json

import pytest
import torch

from model.export import hf_config, to_hf_state_dict
from model.flops import device_peak_flops, mfu
from model.llama import Llama, ModelConfig
from model.presets import PRESETS, model_config
from model.train import TrainingError, ds_config, load_config, lr_lambda

SMALL = ModelConfig(vocab_size=96, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64, max_seq_len=64)


def test_preset_sizes_match_their_names():
    sizes = {}
    for name, cfg in PRESETS.items():
        with torch.device("meta"):  # no memory for the big ones
            sizes[name] = Llama(cfg).num_params()
    assert 4.5e6 < sizes["tiny"] < 5.5e6
    assert 115e6 < sizes["125m"] < 135e6
    assert 320e6 < sizes["350m"] < 380e6
    assert 0.95e9 < sizes["1b"] < 1.2e9
    with pytest.raises(ValueError, match="unknown model preset"):
        model_config("7b")
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        ModelConfig(n_heads=8, n_kv_heads=3)


def test_flops_per_token_is_6n_plus_attention_and_mfu_uses_the_peak_table():
    m = Llama(model_config("tiny", vocab_size=1024))
    cfg = m.cfg
    n = sum(p.numel() for p in m.parameters())  # tied: the one matrix does the output matmul
    assert m.num_params(non_embedding=True) == n
    assert m.flops_per_token(256) == 6 * n + 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * 256
    untied = Llama(model_config("tiny", vocab_size=1024, tie_embeddings=False))
    assert untied.num_params() == n + 1024 * 256 and untied.num_params(non_embedding=True) == n
    # Exact device names as torch reports them: variants of one chip have different peaks.
    peaks = {
        "NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100 PCIe": 756e12, "NVIDIA H100 NVL": 835e12, "NVIDIA H800": 989e12,
        "NVIDIA H200": 989e12, "NVIDIA B200": 2250e12, "AMD Instinct MI300X": 1307.4e12, "NVIDIA A100-SXM4-40GB": 312e12,
        "NVIDIA L40": 181e12, "NVIDIA L40S": 362e12, "NVIDIA L4": 121e12,
    }  # fmt: skip
    assert {name: device_peak_flops(name, "bf16") for name in peaks} == peaks
    assert device_peak_flops("NVIDIA H100 PCIe", "fp32") == 51e12
    for unknown in ("Some CPU", "NVIDIA H100", "NVIDIA L40 Ti", "NVIDIA GeForce RTX 4090"):
        assert device_peak_flops(unknown, "bf16") is None
    assert mfu(1e9, 989e3, 989e12, 2) == pytest.approx(0.5) and mfu(1e9, 1.0, None, 1) is None


def test_forward_shapes_and_causality():
    torch.manual_seed(0)
    m = Llama(SMALL).eval()
    ids = torch.randint(0, 96, (2, 20))
    with torch.no_grad():
        logits = m(ids)
        changed = ids.clone()
        changed[:, 12] = (changed[:, 12] + 1) % 96
        logits2 = m(changed)
    assert logits.shape == (2, 20, 96)
    assert torch.equal(logits[:, :12], logits2[:, :12]) and not torch.allclose(logits[:, 12:], logits2[:, 12:])
    with pytest.raises(ValueError, match="max_seq_len"):
        m(torch.zeros(1, 65, dtype=torch.long))


@pytest.mark.parametrize("tied", [True, False])
def test_hugging_face_llama_computes_the_same_logits(tied):
    from transformers import LlamaForCausalLM

    cfg = ModelConfig(**{**SMALL.to_dict(), "tie_embeddings": tied})
    torch.manual_seed(1)
    native = Llama(cfg).eval()
    hf = LlamaForCausalLM(hf_config(cfg, "float32")[0]).eval()
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(native.state_dict(), cfg), strict=False)
    assert not unexpected and set(missing) <= ({"lm_head.weight"} if tied else set())
    hf.tie_weights()
    ids = torch.randint(0, 96, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, native(ids), atol=1e-5, rtol=1e-4)


def test_config_overrides_schedule_and_ds_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("run_dir: /tmp/x\ndata: {dataset: s3://b/t}\ntrain: {steps: 10, warmup_steps: 2}\n")
    cfg = load_config(str(path), ["train.lr=0.01", "deepspeed=ds_zero3.json", "model.n_layers=2"])
    assert cfg["train"]["lr"] == 0.01 and cfg["train"]["micro_batch_size"] == 8 and cfg["model"] == {"preset": "tiny", "n_layers": 2}
    ds = ds_config(cfg, world=2, precision="bf16")
    assert ds["zero_optimization"]["stage"] == 3 and ds["train_batch_size"] == 16 and ds["bf16"] == {"enabled": True}
    assert ds["optimizer"]["params"]["lr"] == 0.01 and ds["optimizer"]["params"]["torch_adam"] is True
    with pytest.raises(TrainingError, match="unknown config key 'train.lrr'"):
        load_config(str(path), ["train.lrr=1"])
    f = lr_lambda(warmup=2, total=10, min_ratio=0.1)
    assert [f(0), f(1)] == [0.5, 1.0] and f(2) == pytest.approx(1.0) and f(10) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(2, 10))


def test_export_config_reads_the_same_in_transformers_4_and_5(tmp_path):
    """transformers 5 keeps RoPE's theta only under `rope_parameters` and names the tokenizer
    class `TokenizersBackend`; 4.x reads the top-level `rope_theta` (else 10,000) and has no
    such class. The export writes the fields both read, with the preset's own theta."""
    from tokenizers import Tokenizer, models
    from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerFast

    from model.export import add_transformers4_fields

    cfg = ModelConfig(**{**SMALL.to_dict(), "rope_theta": 500000.0})
    hf_config(cfg, "float32")[0].save_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text(Tokenizer(models.BPE(vocab={"<|endoftext|>": 0, "<|pad|>": 1}, merges=[])).to_str())
    PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"), eos_token="<|endoftext|>", pad_token="<|pad|>").save_pretrained(tmp_path)
    add_transformers4_fields(tmp_path, cfg)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 500000.0  # 4.x reads the first, 5.x the second
    assert config["torch_dtype"] == config["dtype"] == "float32"
    tokenizer_config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast" and "backend" not in tokenizer_config
    assert AutoConfig.from_pretrained(tmp_path).rope_parameters["rope_theta"] == 500000.0
    assert AutoTokenizer.from_pretrained(tmp_path).pad_token_id == 1
