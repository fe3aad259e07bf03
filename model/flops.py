"""Training FLOPs per token and model FLOPs utilisation (MFU).

The count follows PaLM (Chowdhery et al. 2022, appendix B) and nanoGPT:

    flops_per_token = 6 * N + 12 * L * H * Q * T

- `6 * N`: every weight of a matmul does one multiply-add (2 FLOPs) per token in the forward
  pass and two in the backward pass (gradient w.r.t. the input and w.r.t. the weight): 2 + 4.
  N counts the weights that take part in matmuls: every parameter except the input embedding
  (a table lookup), but including the output projection even when it is tied to the embedding.
  Norm weights are included; they are a rounding error.
- `12 * L * H * Q * T`: attention scores. Per layer and token the forward pass does
  Q·Kᵀ (2·H·Q·T FLOPs) and scores·V (2·H·Q·T), i.e. 4·H·Q·T; times 3 for forward + backward.
  L layers, H query heads, Q head dim, T sequence length. Like PaLM this counts the full
  T×T score matrix although a causal mask makes half of it unnecessary.

Activation checkpointing re-runs the forward pass but is not counted: this is *model* FLOPs
utilisation, not hardware FLOPs utilisation.

    MFU = flops_per_token * tokens_per_second / (peak_flops_per_device * devices)
"""

from __future__ import annotations

# Dense (no sparsity) peak FLOP/s per device from vendor data sheets, by precision.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989e12, "fp32": 67e12},
    "H100": {"bf16": 989e12, "fp32": 67e12},  # SXM; the PCIe card is ~756e12 bf16
    "A100": {"bf16": 312e12, "fp32": 19.5e12},
    "L40S": {"bf16": 362e12, "fp32": 91.6e12},
    "A10G": {"bf16": 70e12, "fp32": 31.2e12},
    "L4": {"bf16": 121e12, "fp32": 30.3e12},
    "V100": {"bf16": 125e12, "fp32": 15.7e12},  # fp16 tensor cores; V100 has no bf16
}


def training_flops_per_token(n_matmul_params: int, n_layers: int, n_heads: int, head_dim: int, seq_len: int) -> float:
    return 6.0 * n_matmul_params + 12.0 * n_layers * n_heads * head_dim * seq_len


def device_peak_flops(device_name: str, precision: str) -> float | None:
    """Peak FLOP/s for a CUDA device name like 'NVIDIA H100 80GB HBM3'; None when unknown."""
    upper = device_name.upper()
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):
        if key in upper:
            return PEAK_FLOPS[key].get(precision)
    return None


def mfu(flops_per_token: float, tokens_per_s: float, peak_flops_per_device: float | None, devices: int) -> float | None:
    if not peak_flops_per_device:
        return None
    return flops_per_token * tokens_per_s / (peak_flops_per_device * devices)
