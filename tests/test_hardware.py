"""The GPU catalogue: rows against their datasheets, NVML-name lookup that never crosses form factors, peaks."""

from __future__ import annotations

import pytest

from carbontop.core.hardware import GPUS, lookup_gpu, peak_bandwidth_bytes_s, peak_flops

# A few rows checked against the datasheet each one cites, in the datasheet's own form: tensor
# peaks as NVIDIA prints them (with sparsity, which the catalogue halves to dense), bandwidth in
# TB/s. A typo in the catalogue then shows against the published figure, not against a copy of
# the catalogue. (row, BF16 TFLOP/s with sparsity, FP8 with sparsity, TB/s, GB, max W)
DATASHEETS = [
    # NVIDIA H100 Tensor Core GPU datasheet, H100 SXM column
    ("H100 SXM", 1979, 3958, 3.35, 80, 700),
    # NVIDIA H200 Tensor Core GPU datasheet, H200 SXM column
    ("H200 SXM", 1979, 3958, 4.8, 141, 700),
    # NVIDIA L4 Tensor Core GPU datasheet
    ("L4", 242, 485, 0.3, 24, 72),
    # NVIDIA A100 Tensor Core GPU datasheet, A100 80GB SXM column (no FP8 on Ampere)
    ("A100 SXM 80GB", 624, None, 2.039, 80, 400),
]


def by_name(name: str):
    return next(g for g in GPUS if g.name == name)


@pytest.mark.parametrize(("name", "bf16_sparse", "fp8_sparse", "bw_tbs", "mem_gb", "tdp_w"), DATASHEETS)
def test_catalogue_rows_match_their_datasheets(name, bf16_sparse, fp8_sparse, bw_tbs, mem_gb, tdp_w):
    g = by_name(name)
    # dense is half the sparse peak; NVIDIA rounds the half down to a whole TFLOP/s (989, not 989.5)
    assert bf16_sparse / 2 - 0.5 <= g.bf16_dense_tflops <= bf16_sparse / 2
    if fp8_sparse is None:
        assert g.fp8_dense_tflops is None
    else:
        assert fp8_sparse / 2 - 0.5 <= g.fp8_dense_tflops <= fp8_sparse / 2
    assert g.mem_bw_gbs == pytest.approx(bw_tbs * 1000)
    assert (g.mem_gb, g.tdp_w) == (mem_gb, tdp_w)


def test_nvl_variants_named_in_facts_are_present_with_dense_peaks():
    # NVIDIA's datasheets: 1,671 BF16 / 3,341 FP8 TFLOP/s with sparsity -> half of that dense.
    for name, nvml, mem, bw in (
        ("H100 NVL", "NVIDIA H100 NVL", 94, 3900),
        ("H200 NVL", "NVIDIA H200 NVL", 141, 4800),
    ):
        g = lookup_gpu(nvml)
        assert g is not None and g.name == name
        assert g.bf16_dense_tflops == pytest.approx(1671 / 2)
        assert g.fp8_dense_tflops == pytest.approx(3341 / 2)
        assert (g.mem_gb, g.mem_bw_gbs) == (mem, bw)


def test_every_row_has_sources_and_no_nvml_name_is_shared():
    seen: set[str] = set()
    for g in GPUS:
        assert g.source
        assert (g.embodied_kgco2e is None) == (g.embodied_source == "")
        for n in g.nvml_names:
            assert n not in seen
            seen.add(n)
            assert lookup_gpu(n) is g


def test_embodied_figures_are_the_most_specific_public_ones():
    # NVIDIA HGX H100 PCF: 1,312 kgCO2e per 8-GPU board -> 164 per GPU.
    assert by_name("H100 SXM").embodied_kgco2e == pytest.approx(164.0)
    assert "HGX H100" in by_name("H100 SXM").embodied_source
    # Boavizta (EcoLogits): 143 kg for an A100 80GB card.
    assert by_name("A100 SXM 80GB").embodied_kgco2e == 143.0
    assert by_name("A100 PCIe 80GB").embodied_kgco2e == 143.0
    # Luccioni et al. (BLOOM): 150 kg per GPU, the A100-family estimate.
    assert by_name("A100 SXM 40GB").embodied_kgco2e == 150.0
    assert "BLOOM" in by_name("A100 SXM 40GB").embodied_source
    # No public per-GPU figure: left empty rather than borrowed from another part.
    for name in ("H100 PCIe", "H100 NVL", "H200 SXM", "B200", "L4", "T4", "V100 SXM2 16GB"):
        assert by_name(name).embodied_kgco2e is None


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("nvidia h100 80gb hbm3", "H100 SXM"),
        ("  NVIDIA   H100 80GB HBM3 ", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 PCIE", "H100 PCIe"),
        ("NVIDIA H100 80GB HBM2e", "H100 PCIe"),  # HBM2e H100s are PCIe parts
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("NVIDIA H200", "H200 SXM"),
        ("NVIDIA H200 141GB", "H200 SXM"),  # a memory-size suffix is ignored
        ("A100-SXM4-40GB", "A100 SXM 40GB"),  # older drivers drop "NVIDIA "
        ("NVIDIA A100-PCIE-40GB", "A100 PCIe 40GB"),
        ("NVIDIA A100 80GB PCIe", "A100 PCIe 80GB"),
        ("Tesla V100-SXM2-32GB", "V100 SXM2 32GB"),
        ("V100-SXM2-32GB", "V100 SXM2 32GB"),
        ("Tesla T4", "T4"),
        ("NVIDIA L40S", "L40S"),
    ],
)
def test_lookup_exact_and_normalised(query, expected):
    g = lookup_gpu(query)
    assert g is not None and g.name == expected


@pytest.mark.parametrize(
    "query",
    [
        "",
        "NVIDIA H100",  # SXM or PCIe? never guessed
        "NVIDIA A100 PCIe",  # 40GB or 80GB? never guessed
        "NVIDIA A100-SXM4",
        "NVIDIA GH200 480GB",
        "NVIDIA GeForce RTX 4090",
        "H100",
    ],
)
def test_lookup_never_guesses(query):
    assert lookup_gpu(query) is None


def test_pcie_never_maps_to_sxm():
    for name in ("NVIDIA H100 PCIe", "NVIDIA H100 80GB HBM2e", "NVIDIA A100-PCIE-40GB"):
        g = lookup_gpu(name)
        assert g is not None and "SXM" not in g.name


def test_peak_flops_dense_by_dtype():
    h100 = by_name("H100 SXM")
    assert peak_flops(h100, "bf16") == 989e12
    assert peak_flops(h100, "fp16") == 989e12
    assert peak_flops(h100, "fp8") == 1979e12
    assert peak_flops(h100, "fp32") == 67e12
    assert peak_flops(h100, "int4") is None
    assert peak_flops(by_name("V100 SXM2 16GB"), "fp8") is None
    # Volta has no BF16 tensor cores: bf16 is scored against the FP16 tensor peak.
    assert peak_flops(by_name("V100 SXM2 16GB"), "bf16") == 125e12
    assert peak_flops(by_name("A10G"), "fp32") is None
    assert peak_flops(by_name("A100 SXM 80GB"), "fp32") == 19.5e12


def test_peak_bandwidth_in_bytes_per_second():
    assert peak_bandwidth_bytes_s(by_name("H100 SXM")) == 3350e9
    assert peak_bandwidth_bytes_s(by_name("A100 SXM 40GB")) == 1555e9
