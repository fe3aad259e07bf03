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

import re

# Dense (no sparsity) peak tensor FLOP/s per device, by precision, from the vendors' data
# sheets (the "with sparsity" figures halved where a sheet gives only those). Matched against
# the exact device name torch reports, never by substring: "H100 PCIe", "H100 NVL" and the SXM
# "H100 80GB HBM3" are three different peaks, and "L40" is not "L40S".
# fp32 is the plain (non-tensor-core, non-TF32) figure; None where a sheet gives none.
#   H100/H800 SXM, PCIe, NVL: NVIDIA H100 Tensor Core GPU datasheet (2023/2024): BF16 1,979 /
#     1,513 / 1,671 TFLOPS with sparsity, FP32 67 / 51 / 60 TFLOPS. H800: the H100 die with
#     reduced NVLink, same compute (NVIDIA H800 product brief).
#   H200 (SXM) and H200 NVL: NVIDIA H200 datasheet: BF16 1,979 / 1,671 with sparsity, FP32 67 / 60.
#   GH200: NVIDIA GH200 Grace Hopper datasheet: H100 SXM compute.
#   B200: NVIDIA HGX B200 spec (8 GPUs, 36 PFLOPS BF16 with sparsity), i.e. 2.25 PF dense per GPU,
#     FP32 75 TFLOPS (600 TFLOPS per 8).
#   MI300X: AMD Instinct MI300X datasheet: 1,307.4 TFLOPS BF16 dense, FP32 (vector) 163.4.
#   A100 (SXM4 and PCIe): NVIDIA A100 datasheet: BF16 312, FP32 19.5.
#   L40S: NVIDIA L40S datasheet: BF16 362.05 dense (733 with sparsity), FP32 91.6.
#   L40: NVIDIA L40 datasheet: BF16 181.05 dense (362.1 with sparsity), FP32 90.5.
#   L4: NVIDIA L4 datasheet: BF16 121 dense (242 with sparsity), FP32 30.3.
#   A10G: AWS EC2 G5 instance documentation: 70 TFLOPS BF16 tensor, FP32 31.2 (an A10 variant).
#   V100: NVIDIA V100 datasheet: 125 TFLOPS FP16 tensor (no BF16), FP32 15.7 (SXM2).
_GPUS: list[tuple[str, dict[str, float | None]]] = [
    (r"H100 80GB HBM3|H100 SXM5 80GB|H800|H800 80GB HBM3", {"bf16": 989e12, "fp32": 67e12}),
    (r"H100 PCIE|H100 80GB PCIE|H800 PCIE", {"bf16": 756e12, "fp32": 51e12}),
    (r"H100 NVL", {"bf16": 835e12, "fp32": 60e12}),
    (r"H200|H200 141GB HBM3E|GH200 480GB|GH200 144G HBM3E", {"bf16": 989e12, "fp32": 67e12}),
    (r"H200 NVL", {"bf16": 835e12, "fp32": 60e12}),
    (r"B200", {"bf16": 2250e12, "fp32": 75e12}),
    (r"AMD INSTINCT MI300X", {"bf16": 1307.4e12, "fp32": 163.4e12}),
    (r"A100-SXM4-(40|80)GB|A100-PCIE-(40|80)GB|A100 80GB PCIE", {"bf16": 312e12, "fp32": 19.5e12}),
    (r"L40S", {"bf16": 362e12, "fp32": 91.6e12}),
    (r"L40", {"bf16": 181e12, "fp32": 90.5e12}),
    (r"L4", {"bf16": 121e12, "fp32": 30.3e12}),
    (r"A10G", {"bf16": 70e12, "fp32": 31.2e12}),
    (r"(TESLA )?V100-(SXM2|PCIE)-(16|32)GB", {"bf16": 125e12, "fp32": 15.7e12}),  # fp16 tensor cores; V100 has no bf16
]
PEAK_FLOPS: list[tuple[re.Pattern[str], dict[str, float | None]]] = [(re.compile(p), peaks) for p, peaks in _GPUS]


def training_flops_per_token(n_matmul_params: int, n_layers: int, n_heads: int, head_dim: int, seq_len: int) -> float:
    return 6.0 * n_matmul_params + 12.0 * n_layers * n_heads * head_dim * seq_len


def device_peak_flops(device_name: str, precision: str) -> float | None:
    """Peak FLOP/s for a device name as torch reports it ('NVIDIA H100 80GB HBM3', 'AMD
    Instinct MI300X'); None when the device is not in the table (set `device.peak_flops`)."""
    name = " ".join(device_name.upper().replace("NVIDIA ", "").split())
    for pattern, peaks in PEAK_FLOPS:
        if pattern.fullmatch(name):
            return peaks.get(precision)
    return None


def mfu(flops_per_token: float, tokens_per_s: float, peak_flops_per_device: float | None, devices: int) -> float | None:
    if not peak_flops_per_device:
        return None
    return flops_per_token * tokens_per_s / (peak_flops_per_device * devices)
