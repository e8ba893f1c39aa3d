"""Accelerators and slices the paper/pod configs target.

``CHIPS``: per-device peak dense bf16 FLOP/s and HBM, with the page that states them — what
``python -m audiochat_jax.plan --chip`` divides by, and what ``config.peak_flops`` (MFU) is.
``SLICES``: a named slice -> its chip, JAX device count and host count. A JAX device is one
chip on v4/v5p (megacore: the two TensorCores are one device; a "v4-32" counts 32 cores =
16 chips) and on v5e (one core per chip; "v5e-256" = 256 chips), and one GPU on H100.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    peak_bf16_flops: float   # dense (no sparsity) bf16 FLOP/s per JAX device
    hbm_gib: float           # memory per JAX device
    source: str


CHIPS = {
    "v4": Chip("TPU v4", 275e12, 32, "https://cloud.google.com/tpu/docs/v4 (275 TFLOPS bf16, 32 GiB HBM2 per chip)"),
    "v5e": Chip("TPU v5e", 197e12, 16, "https://cloud.google.com/tpu/docs/v5e (197 TFLOPS bf16, 16 GiB HBM2 per chip)"),
    "v5p": Chip("TPU v5p", 459e12, 95, "https://cloud.google.com/tpu/docs/v5p (459 TFLOPS bf16, 95 GiB HBM2e per chip)"),
    "h100": Chip("NVIDIA H100 SXM", 989e12, 80,
                 "https://www.nvidia.com/en-us/data-center/h100/ (989 TFLOPS dense bf16 = the 1,979 "
                 "'with sparsity' figure / 2; 80 GB HBM3)"),
}


@dataclasses.dataclass(frozen=True)
class Slice:
    chip: str          # key of CHIPS
    devices: int       # JAX devices (chips / GPUs)
    hosts: int         # processes (TPU VM workers / GPU nodes)
    accelerator: str   # gcloud --accelerator-type, or the GPU node shape


SLICES = {
    "v4-32": Slice("v4", 16, 4, "v4-32"),
    "v5p-128": Slice("v5p", 64, 16, "v5p-128"),
    "v5e-256": Slice("v5e", 256, 64, "v5litepod-256"),
    "8xh100": Slice("h100", 8, 1, "1 node x 8 H100"),
    "2x8xh100": Slice("h100", 16, 2, "2 nodes x 8 H100"),
}
