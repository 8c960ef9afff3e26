"""Carbon accounting against hand calculations: every intensity source, PUE, embodied, SLO choice.

The Electricity Maps source is tested against a real HTTP server on 127.0.0.1 speaking the
documented v3 JSON.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from carbontop.config import RunConfig
from carbontop.core.carbon import (
    PUE_PRESETS,
    ZONES,
    ConstantIntensity,
    ElectricityMapsIntensity,
    IntensitySource,
    TraceIntensity,
    ZoneIntensity,
    embodied_gco2e,
    gco2e_per_token_at,
    intensity_extremes,
    mean_intensity,
    operational_gco2e,
    recommend,
    recommend_batch,
)
from carbontop.core.hardware import GPUS, lookup_gpu
from carbontop.core.records import PointResult, PointStatus
from carbontop.errors import CarbonSourceError


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()


KWH = 3.6e6  # joules

# ---- trace files ---------------------------------------------------------------------------

NEW_HEADER = (
    "Datetime (UTC),Country,Zone name,Zone id,Carbon intensity gCO₂eq/kWh (direct),"
    "Carbon intensity gCO₂eq/kWh (Life cycle),Carbon-free energy percentage (CFE%),"
    "Renewable energy percentage (RE%),Data source,Data estimated,Data estimation method"
)
OLD_HEADER = (
    "Datetime (UTC),Country,Zone Name,Zone Id,Carbon Intensity gCO₂eq/kWh (direct),"
    "Carbon Intensity gCO₂eq/kWh (LCA),Low Carbon Percentage,Renewable Percentage,"
    "Data Source,Data Estimated,Data Estimation Method"
)
# Life-cycle 100, 200, 300, 400 for hours 00..03 of 2024-05-03; direct is a different series
# (10, 20, 30, 40) so that a test catches the wrong column being read.
LCA = [100, 200, 300, 400]
DIRECT = [10, 20, 30, 40]


def trace_rows(values_lca, values_direct, start_hour=0, day=3, fmt="{:%Y-%m-%d %H:%M:%S}"):
    rows = []
    for i, (lca, direct) in enumerate(zip(values_lca, values_direct, strict=True)):
        t = datetime(2024, 5, day, start_hour, tzinfo=timezone.utc).timestamp() + i * 3600
        stamp = fmt.format(datetime.fromtimestamp(t, tz=timezone.utc))
        rows.append(
            f"{stamp},USA,Midcontinent ISO,US-MIDW-MISO,{direct},{lca},40.1,20.2,eia.gov,false,"
        )
    return rows


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def new_trace(tmp_path) -> Path:
    return write(tmp_path / "US-MIDW-MISO_2024_hourly.csv", [NEW_HEADER, *trace_rows(LCA, DIRECT)])


@pytest.fixture
def old_trace(tmp_path) -> Path:
    return write(tmp_path / "old.csv", [OLD_HEADER, *trace_rows(LCA, DIRECT)])


def one_sentence(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg and msg.endswith((".", "?")), msg
    return msg


# ---- constant and zone ---------------------------------------------------------------------


def test_constant_source_and_pue():
    src = ConstantIntensity(413.0)
    assert isinstance(src, IntensitySource)
    assert src.kind == "constant" and src.intensity_at(0.0) == 413.0
    assert "Wisconsin" in src.description
    chunks = [(100.0, KWH), (200.0, KWH)]  # 2 kWh
    assert operational_gco2e(chunks, src, 1.0) == pytest.approx(826.0)  # 2 x 413
    assert operational_gco2e(chunks, src, 1.5) == pytest.approx(1239.0)  # x 1.5
    assert mean_intensity(chunks, src) == pytest.approx(413.0)
    assert src.hourly_values() is None and intensity_extremes(src) is None
    assert ConstantIntensity(100.0).description == "constant 100 g/kWh"


def test_constant_rejects_negative():
    with pytest.raises(CarbonSourceError) as e:
        ConstantIntensity(-1.0)
    one_sentence(e.value)


def test_zone_source():
    src = ZoneIntensity("FR")
    assert src.kind == "zone" and src.intensity_at(1e9) == 56.0
    assert src.description == "FR annual average 2023 (Ember via CodeCarbon): 56 g/kWh"
    # 0.5 kWh in France at PUE 1.1: 0.5 x 56 x 1.1 = 30.8 g.
    assert operational_gco2e([(0.0, 0.5 * KWH)], src, 1.1) == pytest.approx(30.8)
    assert ZoneIntensity("us-midw-miso").zone == "US-MIDW-MISO"
    assert ZoneIntensity("US-MIDW-MISO").intensity_at(0) == 430.0


def test_zone_table_covers_gpu_cloud_zones_with_sources():
    required = [
        "US-MIDW-MISO",
        "US-CAL-CISO",
        "US-MIDA-PJM",
        "US-TEX-ERCO",
        "US-NY-NYIS",
        "US-NW-BPAT",
        "CA-QC",
        "DE",
        "FR",
        "GB",
        "SE",
        "NO",
        "IE",
        "NL",
        "FI",
        "JP",
        "SG",
        "IN",
        "AU",
    ]
    for zone in required:
        fig = ZONES[zone]
        assert fig.g_per_kwh >= 0 and 2019 <= fig.year <= 2025 and fig.source


def test_unknown_zone_names_valid_ones():
    with pytest.raises(CarbonSourceError) as e:
        ZoneIntensity("MARS-1")
    msg = one_sentence(e.value)
    assert "MARS-1" in msg and "US-MIDW-MISO" in msg and "FR" in msg
    with pytest.raises(CarbonSourceError) as e:
        ZoneIntensity("US-CAL-CIS")
    assert "did you mean US-CAL-CISO" in one_sentence(e.value)


# ---- traces --------------------------------------------------------------------------------


def test_trace_step_function_across_an_hour_boundary(new_trace):
    src = TraceIntensity(new_trace)
    assert src.kind == "trace" and src.column == "life cycle" and src.zone == "US-MIDW-MISO"
    boundary = utc(2024, 5, 3, 1)
    assert src.intensity_at(boundary - 0.001) == 100.0
    assert src.intensity_at(boundary) == 200.0  # an hour owns its first instant
    assert src.intensity_at(utc(2024, 5, 3, 3, 59, 59)) == 400.0
    # A point from 00:30 to 01:15: 0.5 kWh before the boundary, 1 kWh after it.
    chunks = [(utc(2024, 5, 3, 0, 45), 0.5 * KWH), (utc(2024, 5, 3, 1, 10), 1.0 * KWH)]
    # 0.5 x 100 + 1 x 200 = 250 g at PUE 1; 300 g at PUE 1.2.
    assert operational_gco2e(chunks, src, 1.0) == pytest.approx(250.0)
    assert operational_gco2e(chunks, src, 1.2) == pytest.approx(300.0)
    # Energy-weighted mean: 250 g / 1.5 kWh = 166.67 g/kWh.
    assert mean_intensity(chunks, src) == pytest.approx(250.0 / 1.5)
    assert src.notes == []
    assert "life-cycle" in src.description and "US-MIDW-MISO" in src.description
    assert src.hourly_values() == [(utc(2024, 5, 3, h), float(v)) for h, v in enumerate(LCA)]


def test_old_header_version_reads_the_lca_column(old_trace):
    src = TraceIntensity(old_trace)
    assert src.column == "life cycle"
    assert [src.intensity_at(utc(2024, 5, 3, h, 30)) for h in range(4)] == [100, 200, 300, 400]
    assert src.zone == "US-MIDW-MISO"


def test_direct_only_trace_falls_back_and_says_so(tmp_path):
    header = "Datetime (UTC),Zone id,Carbon intensity gCO₂eq/kWh (direct)"
    rows = ["2024-05-03 00:00:00,FR,10", "2024-05-03 01:00:00,FR,20"]
    src = TraceIntensity(write(tmp_path / "direct.csv", [header, *rows]))
    assert src.column == "direct"
    assert src.intensity_at(utc(2024, 5, 3, 1, 30)) == 20.0
    assert "direct" in src.description and any("life-cycle" in n for n in src.notes)


def test_iso_timestamps_and_byte_order_mark(tmp_path):
    rows = trace_rows(LCA, DIRECT, fmt="{:%Y-%m-%dT%H:%M:%S.000Z}")
    path = tmp_path / "bom.csv"
    path.write_text("\ufeff" + "\n".join([NEW_HEADER, *rows]) + "\n", encoding="utf-8")
    src = TraceIntensity(path)
    assert src.intensity_at(utc(2024, 5, 3, 2, 0)) == 300.0


def test_time_shift_moves_trace_times(new_trace):
    # +24 h: the trace's 2024-05-03 00:00 hour now stands for 2024-05-04 00:00.
    src = TraceIntensity(new_trace, shift_h=24)
    assert src.intensity_at(utc(2024, 5, 4, 0, 30)) == 100.0
    assert src.intensity_at(utc(2024, 5, 4, 2, 30)) == 300.0
    assert "+24 h" in src.description
    # -2 h: the 01:00 row (200) now covers 23:00-24:00 on 2024-05-02.
    src = TraceIntensity(new_trace, shift_h=-2)
    assert src.intensity_at(utc(2024, 5, 2, 23, 30)) == 200.0
    # Half-hour shifts are allowed: 00:00 row covers 00:30-01:30.
    src = TraceIntensity(new_trace, shift_h=0.5)
    assert src.intensity_at(utc(2024, 5, 3, 1, 15)) == 100.0
    assert src.intensity_at(utc(2024, 5, 3, 1, 45)) == 200.0


def test_outside_the_trace_clamps_and_notes_once(new_trace):
    src = TraceIntensity(new_trace)
    assert src.intensity_at(utc(2024, 5, 2, 12)) == 100.0  # before: first hour
    assert src.intensity_at(utc(2024, 5, 2, 13)) == 100.0
    assert src.intensity_at(utc(2024, 5, 3, 4, 0)) == 400.0  # the hour after the last: clamped
    assert src.intensity_at(utc(2024, 5, 9)) == 400.0
    assert len(src.notes) == 2
    assert "before" in src.notes[0] and "after" in src.notes[1]


def test_gap_in_trace_holds_previous_value_with_note(tmp_path):
    header = "Datetime (UTC),Carbon intensity gCO₂eq/kWh (Life cycle)"
    rows = ["2024-05-03 00:00:00,100", "2024-05-03 01:00:00,200", "2024-05-03 03:00:00,400"]
    src = TraceIntensity(write(tmp_path / "gap.csv", [header, *rows]))
    assert src.intensity_at(utc(2024, 5, 3, 2, 30)) == 200.0
    assert len(src.notes) == 1 and "no row" in src.notes[0]


@pytest.mark.parametrize(
    ("lines", "needle"),
    [
        ([], "is empty"),
        (
            ["Time,Carbon intensity gCO₂eq/kWh (Life cycle)", "2024-05-03 00:00:00,1"],
            "Datetime (UTC)",
        ),
        (
            ["Datetime (UTC),Zone id,Price", "2024-05-03 00:00:00,FR,1"],
            "no carbon-intensity column",
        ),
        ([NEW_HEADER], "no hourly rows"),
        ([NEW_HEADER, *trace_rows([100, "abc"], [1, 2])], "line 3: carbon intensity 'abc'"),
        ([NEW_HEADER, *trace_rows([100, ""], [1, 2])], "line 3: carbon intensity ''"),
        ([NEW_HEADER, *trace_rows([100, -5], [1, 2])], "line 3"),
        ([NEW_HEADER, "yesterday,USA,x,US,1,2"], "line 2: 'yesterday' is not a date"),
        ([NEW_HEADER, "2024-05-03 00:00:00,USA"], "line 2: 2 fields"),
        ([NEW_HEADER, *trace_rows([1, 2], [1, 2]), trace_rows([3], [3])[0]], "appears twice"),
    ],
)
def test_malformed_traces_give_one_sentence_naming_file_and_line(tmp_path, lines, needle):
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    with pytest.raises(CarbonSourceError) as e:
        TraceIntensity(path)
    msg = one_sentence(e.value)
    assert str(path) in msg and needle in msg


def test_missing_trace_file(tmp_path):
    with pytest.raises(CarbonSourceError) as e:
        TraceIntensity(tmp_path / "nope.csv")
    assert "does not exist" in one_sentence(e.value)
    with pytest.raises(CarbonSourceError) as e:
        TraceIntensity(tmp_path)
    assert "folder" in one_sentence(e.value)


# ---- extremes and carbon per token at an hour ----------------------------------------------


def test_intensity_extremes_needs_a_day(tmp_path, new_trace):
    assert intensity_extremes(TraceIntensity(new_trace)) is None  # 4 hours only
    day = [(h * 7) % 24 * 10 + 50 for h in range(24)]  # a permutation of 50..280
    path = write(tmp_path / "day.csv", [NEW_HEADER, *trace_rows(day, day)])
    assert intensity_extremes(TraceIntensity(path)) == (50.0, 280.0)
    assert intensity_extremes(ZoneIntensity("DE")) is None


def test_carbon_per_token_at_an_intensity():
    # 3.6 J/token at 100 g/kWh, PUE 1.5: 3.6 / 3.6e6 x 100 x 1.5 = 1.5e-4 g; + 1e-3 embodied.
    assert gco2e_per_token_at(3.6, 100.0, 1.5, 1e-3) == pytest.approx(1.15e-3)
    assert gco2e_per_token_at(3.6, 100.0, 1.0) == pytest.approx(1e-4)


# ---- embodied and PUE ----------------------------------------------------------------------


def test_embodied_one_h100_for_an_hour_over_five_years():
    h100 = lookup_gpu("NVIDIA H100 80GB HBM3")
    # 164 kg x 1000 g x 3600 s / (5 years x 365.25 days x 86400 s) = 590,400,000 / 157,788,000.
    expected = 164_000 * 3600 / (5 * 365.25 * 86400)
    assert expected == pytest.approx(3.7417294)
    assert embodied_gco2e([h100], 3600.0, 5.0) == pytest.approx(expected)
    assert embodied_gco2e([h100, h100], 3600.0, 5.0) == pytest.approx(2 * expected)
    # A100 80GB (143 kg) for 10 minutes over 4 years.
    a100 = lookup_gpu("NVIDIA A100-SXM4-80GB")
    assert embodied_gco2e([a100], 600.0, 4.0) == pytest.approx(143_000 * 600 / (4 * 365.25 * 86400))


def test_embodied_unknown_gpu_is_none_never_guessed():
    h100 = lookup_gpu("NVIDIA H100 80GB HBM3")
    pcie = lookup_gpu("NVIDIA H100 PCIe")
    assert pcie is not None and pcie.embodied_kgco2e is None
    assert embodied_gco2e([h100, pcie], 3600.0, 5.0) is None
    assert embodied_gco2e([h100, None], 3600.0, 5.0) is None
    assert embodied_gco2e([], 3600.0, 5.0) is None


def test_pue_presets_have_sources():
    assert PUE_PRESETS["hyperscale"][0] == 1.10
    assert PUE_PRESETS["meta"][0] == 1.08
    assert PUE_PRESETS["industry"][0] == 1.58
    assert all(src for _, src in PUE_PRESETS.values())


def test_every_catalogue_embodied_figure_amortises():
    for g in GPUS:
        got = embodied_gco2e([g], 86400.0, 5.0)
        if g.embodied_kgco2e is None:
            assert got is None
        else:
            assert got == pytest.approx(g.embodied_kgco2e * 1000 / (5 * 365.25))


# ---- the recommendation --------------------------------------------------------------------


def pt(b, s_tok, total, *, op=None, tps=None, status=PointStatus.OK, tpot90=None):
    return PointResult(
        batch_size=b,
        status=status,
        s_per_token=s_tok,
        total_gco2e_per_token=total,
        gco2e_per_token=op if op is not None else (None if total is None else total * 0.9),
        tokens_per_s=tps if tps is not None else 10.0 * b,
        tpot_p90_s=tpot90,
    )


SWEEP = [
    pt(1, 0.05, 0.010, tpot90=0.04),
    pt(2, 0.08, 0.006, tpot90=0.07),
    pt(4, 0.15, 0.004, tpot90=0.12),
    pt(8, 0.25, 0.003, tpot90=0.20),  # greenest, but too slow for 0.2 s/token
    pt(16, None, None, status=PointStatus.OOM),
]


def test_recommend_lowest_carbon_that_meets_the_slo():
    assert recommend_batch(SWEEP, 0.2) == 4
    assert recommend_batch(SWEEP, 0.3) == 8
    assert recommend_batch(SWEEP, 0.1) == 2
    assert recommend_batch(SWEEP, 0.01) is None
    assert recommend_batch([], 0.2) is None


def test_recommend_with_tpot_slo():
    assert recommend_batch(SWEEP, 0.3, slo_tpot_p90_s=0.1) == 2
    assert recommend_batch(SWEEP, 0.3, slo_tpot_p90_s=0.2) == 8
    no_tpot = [pt(1, 0.05, 0.01), pt(2, 0.08, 0.006)]
    assert recommend_batch(no_tpot, 0.3, slo_tpot_p90_s=0.2) is None


def test_recommend_exact_ties_go_to_latency_and_skips_failed_points():
    tied = [pt(4, 0.1, 0.004, tps=50.0), pt(8, 0.15, 0.004, tps=80.0), pt(6, 0.12, 0.004, tps=60.0)]
    assert recommend_batch(tied, 0.2) == 4
    kv = [pt(2, 0.08, 0.006), pt(4, 0.10, 0.001, status=PointStatus.KV_BOUND)]
    assert recommend_batch(kv, 0.2) == 2


def _with_ci(p, rel):
    p.gco2e_per_token_ci95 = p.gco2e_per_token * rel
    return p


def test_recommend_tie_inside_the_intervals_prefers_lower_latency():
    # total 0.0040 (b=8) vs 0.0041 (b=4): 2.5% apart; with 2% half-widths each the intervals
    # overlap (0.0040 + 0.00008 >= 0.0041 - 0.000082), so the faster b=4 wins, and says why
    pts = [_with_ci(pt(4, 0.10, 0.0041), 0.02), _with_ci(pt(8, 0.15, 0.0040), 0.02)]
    r = recommend(pts, 0.2)
    assert r.batch_size == 4 and r.lowest_carbon_batch == 8 and r.basis == "total"
    assert "within the 95% intervals of batch 8's" in r.reason and "lower-latency" in r.reason
    # with 1% half-widths they do not overlap: the lowest carbon wins
    pts = [_with_ci(pt(4, 0.10, 0.0041), 0.01), _with_ci(pt(8, 0.15, 0.0040), 0.01)]
    r = recommend(pts, 0.2)
    assert r.batch_size == 8 and r.reason.startswith("batch 8: lowest total gCO2e/token")
    # without intervals (older runs) the carbon figures compare exactly
    assert recommend_batch([pt(4, 0.10, 0.0041), pt(8, 0.15, 0.0040)], 0.2) == 8


def test_recommend_falls_back_to_operational():
    # No embodied figure anywhere: operational carbon decides.
    pts = [pt(1, 0.05, None, op=0.01), pt(2, 0.08, None, op=0.005), pt(4, 0.3, None, op=0.001)]
    assert recommend_batch(pts, 0.2) == 2
    # Mixed: point 2 lacks a total; comparing its operational figure with point 1's total
    # would favour it unfairly, so all are compared on operational carbon.
    mixed = [pt(1, 0.05, 0.004, op=0.003), pt(2, 0.08, None, op=0.0035)]
    assert recommend_batch(mixed, 0.2) == 1


# ---- choosing a source from the config -----------------------------------------------------


def test_make_intensity_source_priority(new_trace, monkeypatch):
    monkeypatch.delenv("ELECTRICITYMAPS_TOKEN", raising=False)
    assert RunConfig().intensity_source().description.startswith("constant 413")
    assert RunConfig(intensity=250.0).intensity_source().intensity_at(0) == 250.0
    assert RunConfig(zone="SE").intensity_source().kind == "zone"
    src = RunConfig(
        zone="SE", trace=str(new_trace), trace_shift_h=24, emaps_zone="FR"
    ).intensity_source()
    assert src.kind == "trace" and src.intensity_at(utc(2024, 5, 4, 0, 30)) == 100.0
    with pytest.raises(CarbonSourceError) as e:
        RunConfig(zone="DE", emaps_zone="DE").intensity_source()
    assert "ELECTRICITYMAPS_TOKEN" in one_sentence(e.value)
    with pytest.raises(CarbonSourceError):
        RunConfig(zone="NOWHERE").intensity_source()


# ---- Electricity Maps API, against a local server --------------------------------------------

TOKEN = "s3cret-token-7f3a"
T14 = utc(2024, 5, 3, 14)


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def entry(zone: str, t: float, value) -> dict:
    return {
        "zone": zone,
        "carbonIntensity": value,
        "datetime": iso(t),
        "updatedAt": iso(t + 600),
        "isEstimated": False,
        "emissionFactorType": "lifecycle",
    }


class FakeEmaps:
    """An Electricity Maps v3 look-alike: /carbon-intensity/latest and /past-range."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], str | None]] = []
        # Hourly history of zone FR: 14:00 -> 100, 15:00 -> 300, 16:00 -> null (not yet known).
        self.hours = {T14: 100, T14 + 3600: 300, T14 + 7200: None}
        # 40 days of zone DE, for range splitting.
        self.de_hours = {utc(2024, 4, 1) + k * 3600: 200 + k % 24 for k in range(40 * 24)}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def reply(self, code: int, body, raw: bool = False) -> None:
                data = body.encode() if raw else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (the timeout test)

            def do_GET(self):  # noqa: N802 - http.server's name
                url = urlparse(self.path)
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                token = self.headers.get("auth-token")
                fake.requests.append((url.path, q, token))
                zone = q.get("zone", "")
                if token != TOKEN:
                    return self.reply(401, {"message": "Invalid auth-token"})
                if zone == "SLOW":
                    time.sleep(1.0)
                    return self.reply(200, entry(zone, T14, 1))
                if zone == "JUNK":
                    return self.reply(200, "{not json", raw=True)
                if zone == "LIST":
                    return self.reply(200, [1, 2])
                if zone == "NOCI":
                    return self.reply(200, {"zone": zone, "datetime": iso(T14)})
                if zone == "BOOM":
                    return self.reply(500, {"message": "internal error"})
                if zone not in ("FR", "DE"):
                    return self.reply(404, {"message": f"Zone '{zone}' does not exist."})
                if url.path == "/v3/carbon-intensity/latest":
                    return self.reply(200, entry(zone, T14 + 7200, 56))
                if url.path == "/v3/carbon-intensity/past-range":
                    start = datetime.fromisoformat(q["start"].replace("Z", "+00:00")).timestamp()
                    end = datetime.fromisoformat(q["end"].replace("Z", "+00:00")).timestamp()
                    if end - start > 10 * 86400:
                        return self.reply(400, {"message": "range longer than 10 days"})
                    table = fake.hours if zone == "FR" else fake.de_hours
                    data = [entry(zone, t, v) for t, v in sorted(table.items()) if start <= t < end]
                    return self.reply(200, {"zone": zone, "data": data})
                return self.reply(404, {"message": "no such route"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v3"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def emaps_server():
    fake = FakeEmaps()
    yield fake
    fake.close()


@pytest.fixture
def emaps(emaps_server):
    emaps_server.requests.clear()
    return emaps_server


def test_api_latest_then_past_range(emaps):
    src = ElectricityMapsIntensity("FR", TOKEN, base_url=emaps.url)
    assert src.kind == "electricitymaps"
    assert src.latest_g_per_kwh == 56.0 and src.latest_t_s == T14 + 7200
    path, query, token = emaps.requests[0]
    assert path == "/v3/carbon-intensity/latest" and query == {"zone": "FR"} and token == TOKEN
    # Before refresh every instant reads the latest value.
    assert src.intensity_at(T14 + 1800) == 56.0 and src.hourly_values() is None
    # A point from 14:30 to 15:10: 1 kWh before 15:00, 2 kWh after.
    src.refresh(T14 + 1800, T14 + 3600 + 600)
    path, query, _ = emaps.requests[-1]
    assert path == "/v3/carbon-intensity/past-range"
    assert query == {"zone": "FR", "start": "2024-05-03T14:00:00Z", "end": "2024-05-03T16:00:00Z"}
    chunks = [(T14 + 1800, 1.0 * KWH), (T14 + 3600 + 300, 2.0 * KWH)]
    # 1 x 100 + 2 x 300 = 700 g; PUE 1.1 -> 770 g; mean 700 / 3 g/kWh.
    assert operational_gco2e(chunks, src, 1.0) == pytest.approx(700.0)
    assert operational_gco2e(chunks, src, 1.1) == pytest.approx(770.0)
    assert mean_intensity(chunks, src) == pytest.approx(700.0 / 3)
    assert src.hourly_values() == [(T14, 100.0), (T14 + 3600, 300.0)]
    assert src.notes == []


def test_api_hour_without_value_uses_latest_and_notes(emaps):
    src = ElectricityMapsIntensity("FR", TOKEN, base_url=emaps.url)
    src.refresh(T14 + 7200 + 60, T14 + 7200 + 120)  # 16:00 has carbonIntensity null
    assert src.intensity_at(T14 + 7200 + 90) == 56.0
    assert len(src.notes) == 1 and "1 of the 1 hours" in src.notes[0]


def test_api_long_window_is_split_into_ten_day_requests(emaps):
    src = ElectricityMapsIntensity("DE", TOKEN, base_url=emaps.url)
    t0 = utc(2024, 4, 1)
    src.refresh(t0, t0 + 25 * 86400 - 1)
    ranges = [q for p, q, _ in emaps.requests if p.endswith("past-range")]
    assert len(ranges) == 3
    assert src.intensity_at(t0 + 5 * 3600 + 10) == 205.0
    assert len(src.hourly_values()) == 25 * 24
    assert intensity_extremes(src) == (200.0, 223.0)


def test_api_through_make_intensity_source_with_env_token(emaps, monkeypatch):
    import httpx

    monkeypatch.setenv("ELECTRICITYMAPS_TOKEN", TOKEN)
    with httpx.Client() as client:
        src = RunConfig(emaps_zone="FR", zone="DE").intensity_source(
            http_client=client, emaps_base_url=emaps.url
        )
        assert src.kind == "electricitymaps" and src.intensity_at(0) == 56.0
    # The config's token wins over the environment.
    monkeypatch.setenv("ELECTRICITYMAPS_TOKEN", "wrong")
    src = RunConfig(emaps_zone="FR", emaps_token=TOKEN).intensity_source(
        emaps_base_url=emaps.url
    )
    assert src.intensity_at(0) == 56.0


@pytest.mark.parametrize(
    ("zone", "token", "needle"),
    [
        ("FR", "wrong-token", "HTTP 401"),
        ("XX", TOKEN, "HTTP 404"),
        ("BOOM", TOKEN, "HTTP 500"),
        ("JUNK", TOKEN, "not JSON"),
        ("LIST", TOKEN, "not the documented object"),
        ("NOCI", TOKEN, "no carbonIntensity"),
    ],
)
def test_api_errors_are_one_sentence_without_the_token(emaps, zone, token, needle):
    with pytest.raises(CarbonSourceError) as e:
        ElectricityMapsIntensity(zone, token, base_url=emaps.url)
    msg = one_sentence(e.value)
    assert needle in msg and token not in msg and TOKEN not in msg
    assert e.value.__cause__ is None


def test_api_timeout_and_unreachable(emaps):
    with pytest.raises(CarbonSourceError) as e:
        ElectricityMapsIntensity("SLOW", TOKEN, base_url=emaps.url, timeout_s=0.2)
    assert "did not answer within 0.2 s" in one_sentence(e.value)
    # A port nobody listens on.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(CarbonSourceError) as e:
        ElectricityMapsIntensity("FR", TOKEN, base_url=f"http://127.0.0.1:{port}/v3")
    msg = one_sentence(e.value)
    assert "cannot be reached" in msg and TOKEN not in msg


def test_api_token_never_in_repr_or_description(emaps):
    src = ElectricityMapsIntensity("FR", TOKEN, base_url=emaps.url)
    src.refresh(T14, T14 + 7200 + 10)
    for text in (repr(src), src.description, str(vars(src).get("description", "")), *src.notes):
        assert TOKEN not in text
    assert "FR" in src.description and "56" in src.description


def test_api_refresh_failure_mid_sweep_becomes_a_note(emaps):
    import socket

    src = ElectricityMapsIntensity("FR", TOKEN, base_url=emaps.url)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        src.base_url = f"http://127.0.0.1:{s.getsockname()[1]}/v3"
    src.refresh(T14, T14 + 1800)  # must not raise: a sweep in progress is never lost
    assert src.intensity_at(T14 + 60) == 56.0
    assert len(src.notes) == 1 and "cannot be reached" in src.notes[0]
    assert "56 g/kWh" in src.notes[0] and TOKEN not in src.notes[0]


def test_api_missing_token():
    with pytest.raises(CarbonSourceError) as e:
        ElectricityMapsIntensity("FR", "", base_url="http://127.0.0.1:9/v3")
    assert "ELECTRICITYMAPS_TOKEN" in one_sentence(e.value)
