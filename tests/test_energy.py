"""Energy and CO2 records (codecarbon, offline): present, converted with the chosen country's electricity
mix, marked as estimates without power counters, and off or refused with a clear message."""

from __future__ import annotations

import glob
import math
import time
from pathlib import Path

import pytest
from codecarbon.input import DataSource

from segdistill import energy
from segdistill.config import EnergyConfig
from segdistill.errors import ConfigError


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        sum(range(1000))


def test_meter_records_energy_with_the_country_mix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written beside the caller (no emissions.csv)
    mix = DataSource().get_global_energy_mix_data()
    records = {}
    for country in ("FRA", "DEU"):
        meter = energy.start_meter(EnergyConfig(enabled=True, country_iso_code=country, measure_power_secs=1))
        busy(0.5)
        records[country] = meter.stop(images=10)
    for country, record in records.items():
        assert record["kwh"] > 0 and record["duration_s"] >= 0.5 and record["images"] == 10
        assert math.isclose(record["kwh"], record["cpu_kwh"] + record["gpu_kwh"] + record["ram_kwh"], rel_tol=1e-6)
        assert math.isclose(record["kg_co2"] / record["kwh"], mix[country]["carbon_intensity"] / 1000, rel_tol=1e-3)
        assert record["country"] == mix[country]["country_name"]
    assert records["DEU"]["kg_co2"] / records["DEU"]["kwh"] > records["FRA"]["kg_co2"] / records["FRA"]["kwh"]
    if not glob.glob("/sys/class/powercap/intel-rapl:*/energy_uj"):  # no RAPL counters on this machine
        assert records["FRA"]["estimate"] is True and records["FRA"]["sources"]["cpu"].startswith("estimate")
    assert list(Path(tmp_path).iterdir()) == []


def test_switches_and_errors(monkeypatch):
    assert energy.start_meter(EnergyConfig(enabled=False)) is None
    with pytest.raises(ConfigError, match="train.energy.country_iso_code: 'XYZ' is not an ISO 3166-1 alpha-3"):
        energy.start_meter(EnergyConfig(enabled=True, country_iso_code="XYZ"))
    with pytest.raises(ConfigError, match="--country: 'de' is not"):
        energy.start_meter(EnergyConfig(enabled=True, country_iso_code="de"), where="--country")
    monkeypatch.setattr(energy, "codecarbon_available", lambda: False)  # as on an install without the 'sweep' extra
    assert energy.start_meter(EnergyConfig(enabled=None)) is None
    with pytest.raises(ConfigError, match=r"codecarbon is not installed: pip install 'segdistill\[sweep\]'"):
        energy.start_meter(EnergyConfig(enabled=True))
