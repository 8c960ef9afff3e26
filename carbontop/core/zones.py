"""Annual-average grid carbon intensity for Electricity Maps zone ids, with year and source.

Three families of source, all life-cycle (not direct-only) figures:

- Google Cloud region data, GoogleCloudPlatform/region-carbon-info data/yearly/2023.csv,
  column "Grid carbon intensity (gCO2eq / kWh)" (Electricity Maps data for the grid that feeds
  the region; also carried by CodeCarbon's codecarbon/data/cloud/impact.csv). Used for the
  US balancing authorities and the metro zones where GPU clouds sit.
- Ember via Our World in Data, as carried by CodeCarbon's
  codecarbon/data/private_infra/global_energy_mix.json (mostly 2023). Used for whole countries.
- Electricity Maps' own 2023 yearly zone averages, as published in the Green Web
  Foundation's co2.js (data/output/electricity-maps/yearly_2023.js). Used for zones that
  neither of the above covers.

The figures differ by method (a country average is not a balancing authority's), so each
zone's description says where its number came from. For an hour-by-hour figure use a trace
or the Electricity Maps API instead.
"""

from __future__ import annotations

from typing import NamedTuple


class ZoneFigure(NamedTuple):
    g_per_kwh: float  # gCO2e/kWh, annual average
    year: int
    source: str


_GOOGLE = "Google Cloud region-carbon-info 2023"
_EMBER = "Ember via CodeCarbon"
_EMAPS = "Electricity Maps 2023 yearly average via co2.js"

ZONES: dict[str, ZoneFigure] = {
    # --- US balancing authorities, from the Google region that sits in each -----------------
    # us-central1 (Iowa) is in MISO: 430. The paper's single reading for Wisconsin (also
    # MISO) on 2024-05-03 was 413.
    "US-MIDW-MISO": ZoneFigure(430.0, 2023, f"{_GOOGLE}, us-central1 Iowa"),
    "US-CAL-CISO": ZoneFigure(198.0, 2023, f"{_GOOGLE}, us-west2 Los Angeles"),
    "US-MIDA-PJM": ZoneFigure(322.0, 2023, f"{_GOOGLE}, us-east4 Northern Virginia"),
    "US-TEX-ERCO": ZoneFigure(321.0, 2023, f"{_GOOGLE}, us-south1 Dallas"),
    "US-NW-BPAT": ZoneFigure(94.0, 2023, f"{_GOOGLE}, us-west1 Oregon"),
    "US-CAR-SC": ZoneFigure(560.0, 2023, f"{_GOOGLE}, us-east1 South Carolina"),
    "US-NW-PACE": ZoneFigure(588.0, 2023, f"{_GOOGLE}, us-west3 Salt Lake City"),
    "US-NW-NEVP": ZoneFigure(373.0, 2023, f"{_GOOGLE}, us-west4 Las Vegas"),
    # NYISO has no Google region: Electricity Maps' own yearly average.
    "US-NY-NYIS": ZoneFigure(286.0, 2023, _EMAPS),
    "US-NE-ISNE": ZoneFigure(286.0, 2023, _EMAPS),
    "US-CENT-SWPP": ZoneFigure(468.0, 2023, _EMAPS),
    "US-SE-SOCO": ZoneFigure(475.0, 2023, _EMAPS),
    "US-TEN-TVA": ZoneFigure(359.0, 2023, _EMAPS),
    "US-NW-PACW": ZoneFigure(217.0, 2023, _EMAPS),
    "US": ZoneFigure(420.0, 2023, _EMAPS),
    # --- Canada ------------------------------------------------------------------------------
    "CA-QC": ZoneFigure(2.0, 2023, f"{_GOOGLE}, northamerica-northeast1 Montreal"),
    "CA-ON": ZoneFigure(47.0, 2023, f"{_GOOGLE}, northamerica-northeast2 Toronto"),
    "CA": ZoneFigure(170.0, 2023, _EMBER),
    # --- Europe, whole countries -------------------------------------------------------------
    "DE": ZoneFigure(381.0, 2023, _EMBER),
    "FR": ZoneFigure(56.0, 2023, _EMBER),
    "GB": ZoneFigure(238.0, 2023, _EMBER),
    "SE": ZoneFigure(41.0, 2023, _EMBER),
    "NO": ZoneFigure(30.0, 2023, _EMBER),
    "IE": ZoneFigure(291.0, 2023, _EMBER),
    "NL": ZoneFigure(268.0, 2023, _EMBER),
    "FI": ZoneFigure(79.0, 2023, _EMBER),
    "IS": ZoneFigure(28.0, 2023, _EMBER),
    "BE": ZoneFigure(175.0, 2023, _EMAPS),
    "DK": ZoneFigure(140.0, 2023, _EMAPS),
    "ES": ZoneFigure(153.0, 2023, _EMAPS),
    "IT": ZoneFigure(316.0, 2023, _EMAPS),
    "PL": ZoneFigure(726.0, 2023, _EMAPS),
    "CH": ZoneFigure(64.0, 2023, _EMAPS),
    "AT": ZoneFigure(152.0, 2023, _EMAPS),
    "PT": ZoneFigure(149.0, 2023, _EMAPS),
    # --- Asia-Pacific --------------------------------------------------------------------------
    "JP": ZoneFigure(485.0, 2023, _EMBER),
    "JP-TK": ZoneFigure(459.0, 2023, f"{_GOOGLE}, asia-northeast1 Tokyo"),
    "SG": ZoneFigure(471.0, 2023, _EMBER),
    "IN": ZoneFigure(713.0, 2023, _EMBER),
    "IN-WE": ZoneFigure(648.0, 2023, f"{_GOOGLE}, asia-south1 Mumbai"),
    "AU": ZoneFigure(549.0, 2023, _EMBER),
    "AU-NSW": ZoneFigure(501.0, 2023, f"{_GOOGLE}, australia-southeast1 Sydney"),
    "AU-VIC": ZoneFigure(456.0, 2023, f"{_GOOGLE}, australia-southeast2 Melbourne"),
    "KR": ZoneFigure(443.0, 2023, _EMAPS),
    "TW": ZoneFigure(534.0, 2023, _EMAPS),
    "HK": ZoneFigure(598.0, 2023, _EMAPS),
    "CN": ZoneFigure(535.0, 2023, _EMAPS),
    "NZ": ZoneFigure(97.0, 2023, _EMAPS),
    # --- elsewhere -----------------------------------------------------------------------------
    "BR": ZoneFigure(82.0, 2023, _EMAPS),
    "ZA": ZoneFigure(700.0, 2023, _EMAPS),
    "IL": ZoneFigure(502.0, 2023, _EMAPS),
}


def find_zone(zone: str) -> tuple[str, ZoneFigure] | None:
    """The canonical zone id and its figure; zone ids are matched without regard to case."""
    wanted = zone.strip().upper()
    for zone_id, figure in ZONES.items():
        if zone_id.upper() == wanted:
            return zone_id, figure
    return None
