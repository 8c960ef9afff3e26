"""GPU catalogue keyed by NVML name: dense peaks, memory bandwidth, TDP and embodied carbon.

Every peak is the *dense* figure. NVIDIA's datasheets for Ampere and newer print tensor-core
peaks "with sparsity", twice the dense rate; those are halved here, because MFU divided by a
sparse peak understates utilisation by 2x (one of the weaknesses of the paper carbontop follows).

Embodied carbon is cradle-to-gate kgCO2e for one GPU. There are very few public figures, so
each part carries the most specific one that exists and says which it is; a part with no
public figure has None, and the caller warns instead of guessing.

Lookup never guesses across form factors: an H100 PCIe must never be scored against the SXM
peaks (the SXM part is 30% faster), so a name that does not match one part unambiguously
returns None.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TFLOP = 1e12
GB = 1e9


@dataclass(frozen=True)
class GpuSpec:
    name: str  # display name, e.g. "H100 SXM"
    nvml_names: tuple[str, ...]  # exact NVML names, e.g. ("NVIDIA H100 80GB HBM3",)
    bf16_dense_tflops: float  # dense FP16/BF16 tensor peak (NOT the sparse figure)
    fp8_dense_tflops: float | None
    fp32_tflops: float | None  # plain FP32 (non-tensor) peak, for fp32 runs
    mem_bw_gbs: float  # peak memory bandwidth, GB/s
    mem_gb: float
    tdp_w: float
    embodied_kgco2e: float | None  # cradle-to-gate per GPU; None where no public figure exists
    embodied_source: str  # where that came from ("" when None)
    source: str  # where the peaks came from


# ---- embodied figures (kgCO2e per GPU, cradle to gate) -------------------------------------

# NVIDIA HGX H100 Product Carbon Footprint summary: 1,312 kgCO2e for the 8-GPU board, cradle to
# gate; the board includes NVSwitch and baseboard, shared equally over the 8 GPUs.
_HGX_H100_BOARD_KG = 1312.0
_H100_SXM_KG = _HGX_H100_BOARD_KG / 8  # 164 kg
_H100_SXM_SRC = (
    "NVIDIA HGX H100 Product Carbon Footprint: 1,312 kgCO2e per 8-GPU board, cradle to gate, "
    "/ 8 GPUs (board and NVSwitch share included)"
)
# Boavizta, as used by EcoLogits (docs/methodology/llm_inference.md): 143 kgCO2e for an
# A100 80GB card.
_A100_80_KG = 143.0
_A100_80_SRC = "Boavizta A100 80GB card, as used by EcoLogits (docs/methodology/llm_inference.md)"
# Luccioni et al., "Estimating the Carbon Footprint of BLOOM" (2022): 150 kgCO2e per GPU, the
# study's estimate for the A100s of the Jean Zay cluster. No A100 40GB-specific figure exists,
# so the A100 40GB parts carry this family-level estimate (and say so).
_A100_BLOOM_KG = 150.0
_A100_BLOOM_SRC = (
    "Luccioni et al., 'Estimating the Carbon Footprint of BLOOM': 150 kgCO2e per GPU, an "
    "A100-family estimate (no figure specific to the 40GB part is published)"
)

# ---- the catalogue -------------------------------------------------------------------------

_LIGHTNING = (
    "NVIDIA datasheet via Lightning lightning/fabric/utilities/throughput.py (sparse peaks halved)"
)

GPUS: tuple[GpuSpec, ...] = (
    # V100: NVIDIA V100 datasheet (volta-v100-datasheet-update-us-1165301-r5), via Lightning's
    # _CUDA_FLOPS: SXM2 125 FP16 tensor / 15.7 FP32, PCIe 112 / 14, V100S 130 / 16.4. No BF16
    # tensor cores on Volta; bf16 runs are scored against the FP16 tensor peak.
    GpuSpec(
        name="V100 SXM2 16GB",
        nvml_names=("Tesla V100-SXM2-16GB",),
        bf16_dense_tflops=125.0,
        fp8_dense_tflops=None,
        fp32_tflops=15.7,
        mem_bw_gbs=900.0,
        mem_gb=16.0,
        tdp_w=300.0,
        embodied_kgco2e=None,
        embodied_source="",
        source=_LIGHTNING,
    ),
    GpuSpec(
        name="V100 SXM2 32GB",
        nvml_names=("Tesla V100-SXM2-32GB",),
        bf16_dense_tflops=125.0,
        fp8_dense_tflops=None,
        fp32_tflops=15.7,
        mem_bw_gbs=900.0,
        mem_gb=32.0,
        tdp_w=300.0,
        embodied_kgco2e=None,
        embodied_source="",
        source=_LIGHTNING,
    ),
    GpuSpec(
        name="V100 PCIe 16GB",
        nvml_names=("Tesla V100-PCIE-16GB",),
        bf16_dense_tflops=112.0,
        fp8_dense_tflops=None,
        fp32_tflops=14.0,
        mem_bw_gbs=900.0,
        mem_gb=16.0,
        tdp_w=250.0,
        embodied_kgco2e=None,
        embodied_source="",
        source=_LIGHTNING,
    ),
    GpuSpec(
        name="V100 PCIe 32GB",
        nvml_names=("Tesla V100-PCIE-32GB",),
        bf16_dense_tflops=112.0,
        fp8_dense_tflops=None,
        fp32_tflops=14.0,
        mem_bw_gbs=900.0,
        mem_gb=32.0,
        tdp_w=250.0,
        embodied_kgco2e=None,
        embodied_source="",
        source=_LIGHTNING,
    ),
    GpuSpec(
        name="V100S PCIe",
        nvml_names=("Tesla V100S-PCIE-32GB",),
        bf16_dense_tflops=130.0,
        fp8_dense_tflops=None,
        fp32_tflops=16.4,
        mem_bw_gbs=1134.0,
        mem_gb=32.0,
        tdp_w=250.0,
        embodied_kgco2e=None,
        embodied_source="",
        source=_LIGHTNING,
    ),
    # A100: NVIDIA A100 datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4), via Lightning:
    # 312 dense BF16/FP16 tensor, 19.5 FP32 for every form factor; bandwidth, memory, TDP per
    # form factor from the same datasheet. Older drivers report the names without "NVIDIA ".
    GpuSpec(
        name="A100 SXM 40GB",
        nvml_names=("NVIDIA A100-SXM4-40GB", "A100-SXM4-40GB"),
        bf16_dense_tflops=312.0,
        fp8_dense_tflops=None,
        fp32_tflops=19.5,
        mem_bw_gbs=1555.0,
        mem_gb=40.0,
        tdp_w=400.0,
        embodied_kgco2e=_A100_BLOOM_KG,
        embodied_source=_A100_BLOOM_SRC,
        source=_LIGHTNING,
    ),
    GpuSpec(
        name="A100 SXM 80GB",
        nvml_names=("NVIDIA A100-SXM4-80GB", "A100-SXM4-80GB"),
        bf16_dense_tflops=312.0,
        fp8_dense_tflops=None,
        fp32_tflops=19.5,
        mem_bw_gbs=2039.0,
        mem_gb=80.0,
        tdp_w=400.0,
        embodied_kgco2e=_A100_80_KG,
        embodied_source=_A100_80_SRC,
        source=_LIGHTNING,
    ),
    GpuSpec(
        name="A100 PCIe 40GB",
        nvml_names=("NVIDIA A100-PCIE-40GB", "A100-PCIE-40GB"),
        bf16_dense_tflops=312.0,
        fp8_dense_tflops=None,
        fp32_tflops=19.5,
        mem_bw_gbs=1555.0,
        mem_gb=40.0,
        tdp_w=250.0,
        embodied_kgco2e=_A100_BLOOM_KG,
        embodied_source=_A100_BLOOM_SRC,
        source=_LIGHTNING,
    ),
    GpuSpec(
        name="A100 PCIe 80GB",
        nvml_names=("NVIDIA A100 80GB PCIe",),
        bf16_dense_tflops=312.0,
        fp8_dense_tflops=None,
        fp32_tflops=19.5,
        mem_bw_gbs=1935.0,
        mem_gb=80.0,
        tdp_w=300.0,
        embodied_kgco2e=_A100_80_KG,
        embodied_source=_A100_80_SRC,
        source=_LIGHTNING,
    ),
    # A10G: AWS's A10G datasheet gives 70 dense FP16/BF16 tensor TFLOP/s, 600 GB/s, 24 GB, 300 W.
    # It is not the A10 (125 TFLOP/s); no FP32 figure from AWS was found, so fp32 is None.
    GpuSpec(
        name="A10G",
        nvml_names=("NVIDIA A10G",),
        bf16_dense_tflops=70.0,
        fp8_dense_tflops=None,
        fp32_tflops=None,
        mem_bw_gbs=600.0,
        mem_gb=24.0,
        tdp_w=300.0,
        embodied_kgco2e=None,
        embodied_source="",
        source="AWS A10G datasheet (EC2 G5)",
    ),
    # T4: NVIDIA T4 datasheet (t4-tensor-core-datasheet-951643) via Lightning: 65 FP16 tensor,
    # 8.1 FP32; 320 GB/s, 16 GB, 70 W. Turing has no BF16 tensor cores.
    GpuSpec(
        name="T4",
        nvml_names=("Tesla T4",),
        bf16_dense_tflops=65.0,
        fp8_dense_tflops=None,
        fp32_tflops=8.1,
        mem_bw_gbs=320.0,
        mem_gb=16.0,
        tdp_w=70.0,
        embodied_kgco2e=None,
        embodied_source="",
        source=_LIGHTNING,
    ),
    # L4: NVIDIA L4 datasheet: 242 BF16 / 485 FP8 with sparsity -> 121 / 242 dense; 30.3 FP32;
    # 300 GB/s, 24 GB, 72 W.
    GpuSpec(
        name="L4",
        nvml_names=("NVIDIA L4",),
        bf16_dense_tflops=121.0,
        fp8_dense_tflops=242.0,
        fp32_tflops=30.3,
        mem_bw_gbs=300.0,
        mem_gb=24.0,
        tdp_w=72.0,
        embodied_kgco2e=None,
        embodied_source="",
        source="NVIDIA L4 datasheet (sparse peaks halved)",
    ),
    # L40S: NVIDIA L40S datasheet: 733 BF16 / 1,466 FP8 with sparsity -> 362 / 733 dense
    # (NVIDIA rounds the dense BF16 to 362); 91.6 FP32; 864 GB/s, 48 GB, 350 W.
    GpuSpec(
        name="L40S",
        nvml_names=("NVIDIA L40S",),
        bf16_dense_tflops=362.0,
        fp8_dense_tflops=733.0,
        fp32_tflops=91.6,
        mem_bw_gbs=864.0,
        mem_gb=48.0,
        tdp_w=350.0,
        embodied_kgco2e=None,
        embodied_source="",
        source="NVIDIA L40S datasheet (sparse peaks halved)",
    ),
    # H100 SXM: NVIDIA H100 datasheet via Lightning: 1,979 BF16 / 3,958 FP8 sparse -> 989 /
    # 1,979 dense; 67 FP32; 3,350 GB/s, 80 GB, 700 W.
    GpuSpec(
        name="H100 SXM",
        nvml_names=("NVIDIA H100 80GB HBM3",),
        bf16_dense_tflops=989.0,
        fp8_dense_tflops=1979.0,
        fp32_tflops=67.0,
        mem_bw_gbs=3350.0,
        mem_gb=80.0,
        tdp_w=700.0,
        embodied_kgco2e=_H100_SXM_KG,
        embodied_source=_H100_SXM_SRC,
        source=_LIGHTNING,
    ),
    # H100 PCIe: NVIDIA product brief PB-11133: 1,513 BF16 / 3,026 FP8 sparse -> 756 / 1,513
    # dense; 51 FP32; 2,000 GB/s, 80 GB, 350 W. Lightning also maps "HBM2e" H100 names here.
    # The HGX H100 footprint covers the SXM board, not this card: no public figure, None.
    GpuSpec(
        name="H100 PCIe",
        nvml_names=("NVIDIA H100 PCIe", "NVIDIA H100 80GB HBM2e"),
        bf16_dense_tflops=756.0,
        fp8_dense_tflops=1513.0,
        fp32_tflops=51.0,
        mem_bw_gbs=2000.0,
        mem_gb=80.0,
        tdp_w=350.0,
        embodied_kgco2e=None,
        embodied_source="",
        source="NVIDIA H100 PCIe product brief PB-11133 (sparse peaks halved)",
    ),
    # H100 NVL: NVIDIA H100 datasheet, NVL column: 1,671 BF16 / 3,341 FP8 sparse -> 835.5 /
    # 1,670.5 dense; 60 FP32; 3,900 GB/s, 94 GB, 350-400 W configurable (the maximum here).
    GpuSpec(
        name="H100 NVL",
        nvml_names=("NVIDIA H100 NVL",),
        bf16_dense_tflops=835.5,
        fp8_dense_tflops=1670.5,
        fp32_tflops=60.0,
        mem_bw_gbs=3900.0,
        mem_gb=94.0,
        tdp_w=400.0,
        embodied_kgco2e=None,
        embodied_source="",
        source="NVIDIA H100 datasheet, H100 NVL column (sparse peaks halved)",
    ),
    # H200 SXM: NVIDIA H200 datasheet: same compute as H100 SXM (989 / 1,979 dense, 67 FP32);
    # 4,800 GB/s, 141 GB, 700 W. The lab's H200 reports "NVIDIA H200" (143,771 MiB, 700 W).
    # Embodied: NVIDIA publishes product carbon footprints for the HGX H100 and HGX B200 boards
    # only, and no peer-reviewed life-cycle study gives an H200 figure; the HGX H100 board's
    # cannot stand in (141 GB of HBM3e against 80 GB of HBM3), so the column stays empty.
    GpuSpec(
        name="H200 SXM",
        nvml_names=("NVIDIA H200",),
        bf16_dense_tflops=989.0,
        fp8_dense_tflops=1979.0,
        fp32_tflops=67.0,
        mem_bw_gbs=4800.0,
        mem_gb=141.0,
        tdp_w=700.0,
        embodied_kgco2e=None,
        embodied_source="",
        source="NVIDIA H200 datasheet, H200 SXM column (sparse peaks halved)",
    ),
    # H200 NVL: NVIDIA H200 datasheet, NVL column: 1,671 BF16 / 3,341 FP8 sparse -> 835.5 /
    # 1,670.5 dense; 60 FP32; 4,800 GB/s, 141 GB, up to 600 W.
    GpuSpec(
        name="H200 NVL",
        nvml_names=("NVIDIA H200 NVL",),
        bf16_dense_tflops=835.5,
        fp8_dense_tflops=1670.5,
        fp32_tflops=60.0,
        mem_bw_gbs=4800.0,
        mem_gb=141.0,
        tdp_w=600.0,
        embodied_kgco2e=None,
        embodied_source="",
        source="NVIDIA H200 datasheet, H200 NVL column (sparse peaks halved)",
    ),
    # Jetson boards: NVML has no power there; the name is the device tree's model with the memory
    # size (telemetry.tegrastats.board_name), e.g. "Jetson AGX Orin 64GB". The GPU shares the
    # board's LPDDR memory with the CPU.
    # AGX Orin 64GB: NVIDIA Jetson AGX Orin Series Technical Brief v1.2: 2048 CUDA cores and 64
    # tensor cores at up to 1.3 GHz, 5.3 FP32 TFLOP/s, 170 sparse INT8 TOPS on the GPU -> 85 dense
    # INT8 -> 42.5 dense FP16/BF16 (Ampere's tensor cores run FP16 at half the INT8 rate);
    # 256-bit LPDDR5, 204.8 GB/s; 15-60 W module power.
    GpuSpec(
        name="Jetson AGX Orin 64GB",
        nvml_names=("Jetson AGX Orin 64GB",),
        bf16_dense_tflops=42.5,
        fp8_dense_tflops=None,
        fp32_tflops=5.3,
        mem_bw_gbs=204.8,
        mem_gb=64.0,
        tdp_w=60.0,
        embodied_kgco2e=None,
        embodied_source="",
        source="NVIDIA Jetson AGX Orin Series Technical Brief v1.2 (GPU sparse INT8 TOPS / 4)",
    ),
    # AGX Orin 32GB: same brief: 1792 CUDA cores and 56 tensor cores at up to 930 MHz ->
    # 56 x 0.93 GHz x 512 FLOP/clock = 26.7 dense FP16/BF16 TFLOP/s (the per-tensor-core rate that
    # reproduces the 64GB module's 170 sparse INT8 TOPS), 1792 x 2 x 0.93 = 3.3 FP32 TFLOP/s;
    # 204.8 GB/s; 15-40 W.
    GpuSpec(
        name="Jetson AGX Orin 32GB",
        nvml_names=("Jetson AGX Orin 32GB",),
        bf16_dense_tflops=26.7,
        fp8_dense_tflops=None,
        fp32_tflops=3.3,
        mem_bw_gbs=204.8,
        mem_gb=32.0,
        tdp_w=40.0,
        embodied_kgco2e=None,
        embodied_source="",
        source="NVIDIA Jetson AGX Orin Series Technical Brief v1.2 (cores x clock)",
    ),
    # AGX Xavier 32GB: NVIDIA Jetson AGX Xavier module data sheet: 512-core Volta GPU with 64
    # tensor cores at up to 1377 MHz, 11 FP16 TFLOP/s (22 INT8 TOPS) on the GPU, 512 x 2 x 1.377
    # = 1.4 FP32 TFLOP/s; 256-bit LPDDR4x, 136.5 GB/s; 10-30 W. Volta has no BF16: bf16 runs are
    # scored against the FP16 tensor peak, as for V100. Early L4T names the board "Jetson-AGX".
    GpuSpec(
        name="Jetson AGX Xavier 32GB",
        nvml_names=("Jetson AGX Xavier 32GB", "Jetson-AGX 32GB"),
        bf16_dense_tflops=11.0,
        fp8_dense_tflops=None,
        fp32_tflops=1.4,
        mem_bw_gbs=136.5,
        mem_gb=32.0,
        tdp_w=30.0,
        embodied_kgco2e=None,
        embodied_source="",
        source="NVIDIA Jetson AGX Xavier module data sheet",
    ),
    # B200 (HGX): NVIDIA HGX B200 specification, per GPU: 4.5 PFLOP/s BF16 / 9 FP8 sparse ->
    # 2,250 / 4,500 dense; 75 FP32; 8,000 GB/s (NVIDIA's later HGX tables print 7.7 TB/s),
    # 180 GB, 1,000 W. NVIDIA's HGX B200 footprint is published per exaFLOP (0.50 gCO2e),
    # not per GPU, so the embodied figure stays None.
    GpuSpec(
        name="B200",
        nvml_names=("NVIDIA B200",),
        bf16_dense_tflops=2250.0,
        fp8_dense_tflops=4500.0,
        fp32_tflops=75.0,
        mem_bw_gbs=8000.0,
        mem_gb=180.0,
        tdp_w=1000.0,
        embodied_kgco2e=None,
        embodied_source="",
        source="NVIDIA HGX B200 specification, per GPU (sparse peaks halved)",
    ),
)


# ---- lookup --------------------------------------------------------------------------------

_PREFIXES = ("nvidia", "tesla")
_CAPACITY = re.compile(r"^\d+(\.\d+)?(gb|g)$")


def _tokens(name: str) -> list[str]:
    """Lower-case words of a name, with separators unified and vendor prefixes dropped."""
    words = re.split(r"[\s\-_/]+", name.strip().lower())
    return [w for w in words if w and w not in _PREFIXES]


def _key(name: str) -> str:
    return " ".join(_tokens(name))


def _key_without_capacity(name: str) -> str:
    # Only the memory *size* is dropped ("80gb", "141gb"); the memory *type* stays, because it
    # tells parts apart ("H100 80GB HBM3" is the SXM part, "H100 80GB HBM2e" a PCIe one).
    return " ".join(t for t in _tokens(name) if not _CAPACITY.match(t))


def _build_index() -> tuple[
    dict[str, GpuSpec], dict[str, GpuSpec | None], dict[str, GpuSpec | None]
]:
    exact: dict[str, GpuSpec] = {}
    normal: dict[str, GpuSpec | None] = {}
    loose: dict[str, GpuSpec | None] = {}

    def add(table: dict[str, GpuSpec | None], key: str, spec: GpuSpec) -> None:
        # A key two parts share is ambiguous: it maps to None, never to either part.
        if key in table and table[key] is not spec:
            table[key] = None
        else:
            table[key] = spec

    for spec in GPUS:
        for nvml in spec.nvml_names:
            exact[nvml] = spec
        for name in (*spec.nvml_names, spec.name):
            add(normal, _key(name), spec)
            add(loose, _key_without_capacity(name), spec)
    return exact, normal, loose


_EXACT, _NORMAL, _LOOSE = _build_index()


def lookup_gpu(nvml_name: str) -> GpuSpec | None:
    """The catalogue row for an NVML device name, or None when no single part matches.

    Tried in order: the exact NVML name; the name with case, spaces, hyphens and the
    "NVIDIA "/"Tesla " prefix normalised; then the same without memory-size words ("141GB").
    A normalised key that two parts share matches neither.
    """
    if not nvml_name:
        return None
    spec = _EXACT.get(nvml_name)
    if spec is not None:
        return spec
    spec = _NORMAL.get(_key(nvml_name))
    if spec is not None:
        return spec
    return _LOOSE.get(_key_without_capacity(nvml_name))


_DTYPE_ALIASES = {
    "bf16": "half",
    "bfloat16": "half",
    "fp16": "half",
    "float16": "half",
    "half": "half",
    "fp8": "fp8",
    "float8": "fp8",
    "fp32": "fp32",
    "float32": "fp32",
    "float": "fp32",
}


def peak_flops(spec: GpuSpec, dtype: str) -> float | None:
    """Dense peak FLOP/s for a compute dtype ("bf16"/"fp16", "fp8", "fp32"); None if unknown.

    On parts without BF16 tensor cores (V100, T4) "bf16" returns the FP16 tensor peak: the
    fastest half-precision rate the chip has, which is what MFU should be measured against.
    """
    kind = _DTYPE_ALIASES.get(dtype.strip().lower())
    if kind == "half":
        return spec.bf16_dense_tflops * TFLOP
    if kind == "fp8":
        return None if spec.fp8_dense_tflops is None else spec.fp8_dense_tflops * TFLOP
    if kind == "fp32":
        return None if spec.fp32_tflops is None else spec.fp32_tflops * TFLOP
    return None


def peak_bandwidth_bytes_s(spec: GpuSpec) -> float:
    """Peak memory bandwidth in bytes/s (datasheets use decimal GB/s)."""
    return spec.mem_bw_gbs * GB
