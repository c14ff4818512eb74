"""Energy (kWh) and emissions (kg CO2) of a stretch of work, measured by codecarbon in offline mode.

Offline mode never touches the network: the country's electricity mix (``country_iso_code``) turns
kWh into kg CO2. Power comes from hardware counters where the machine exposes them (RAPL for the CPU,
NVML for NVIDIA GPUs); without them codecarbon estimates the CPU's power from its load and a TDP, and
the record says ``estimate: true``. RAM power is always codecarbon's per-GB estimate.

    meter = start_meter(cfg.train.energy)      # None when disabled or codecarbon is absent (enabled: null)
    ...                                        # the work
    record = meter.stop(images=101)            # dict for metrics.json
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import torch

from segdistill.config import EnergyConfig
from segdistill.errors import ConfigError

# codecarbon's names for CPU power read from counters; every other mode is a load x TDP estimate.
MEASURED_CPU_MODES = ("intel_rapl", "intel_power_gadget", "windows_emi", "apple_powermetrics")


def codecarbon_available() -> bool:
    return importlib.util.find_spec("codecarbon") is not None


def energy_enabled(cfg: EnergyConfig) -> bool:
    """``cfg.enabled``, where None means "if codecarbon is installed"."""
    if cfg.enabled is None:
        return codecarbon_available()
    if cfg.enabled and not codecarbon_available():
        raise ConfigError(
            "train.energy.enabled is true but codecarbon is not installed: "
            "pip install 'segdistill[sweep]' (or set train.energy.enabled=false)"
        )
    return cfg.enabled


def check_country(code: str, where: str = "train.energy.country_iso_code") -> str:
    """The country name of an ISO 3166-1 alpha-3 code codecarbon knows; ConfigError (naming ``where``) otherwise."""
    from codecarbon.input import DataSource

    mix = DataSource().get_global_energy_mix_data()
    if code not in mix:
        raise ConfigError(
            f"{where}: {code!r} is not an ISO 3166-1 alpha-3 country code "
            f"codecarbon has an electricity mix for (e.g. USA, DEU, FRA, GBR, CHN, IND); known: {len(mix)} codes"
        )
    return mix[code]["country_name"]


class EnergyMeter:
    """One codecarbon tracker, started on construction. Several meters in one process share codecarbon's
    hardware probe (about 2 s, paid once)."""

    def __init__(self, cfg: EnergyConfig, whole_machine: bool = False, where: str = "train.energy.country_iso_code") -> None:
        from codecarbon import OfflineEmissionsTracker

        self.country = check_country(cfg.country_iso_code, where)
        self.cfg = cfg
        self.tracking_mode = "machine" if whole_machine else cfg.tracking_mode
        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        self.tracker = OfflineEmissionsTracker(
            country_iso_code=cfg.country_iso_code,
            tracking_mode=self.tracking_mode,
            measure_power_secs=cfg.measure_power_secs,
            output_methods=[],  # no emissions.csv: the record goes into metrics.json
            log_level="error",
            allow_multiple_runs=True,  # several sweep workers on one machine
        )
        self.tracker.start()

    def stop(self, images: int | None = None) -> dict[str, Any]:
        """The record of the work since construction; ``images``: how many it processed (inference cost)."""
        self.tracker.stop()
        data = self.tracker.final_emissions_data
        cpu_mode = next((getattr(h, "_mode", None) for h in self.tracker._hardware if type(h).__name__ == "CPU"), None)
        cpu_measured = cpu_mode in MEASURED_CPU_MODES
        gpu_measured = data.gpu_count > 0  # codecarbon reads GPU power from NVML (or amdsmi) only
        gpu_missed = torch.cuda.is_available() and not gpu_measured
        record = {
            "kwh": data.energy_consumed,
            "kg_co2": data.emissions,
            "duration_s": data.duration,
            "cpu_kwh": data.cpu_energy,
            "gpu_kwh": data.gpu_energy,
            "ram_kwh": data.ram_energy,
            # True when the CPU's power was not read from counters or a GPU's not at all (RAM: always estimated).
            "estimate": not cpu_measured or gpu_missed,
            "sources": {
                "cpu": f"counters ({cpu_mode})" if cpu_measured else f"estimate ({cpu_mode}: load x TDP)",
                "gpu": "counters (NVML)" if gpu_measured else "not measured" if gpu_missed else "none",
                "ram": "estimate (codecarbon's per-GB model)",
            },
            "cpu_model": data.cpu_model,
            "gpu_model": data.gpu_model or None,
            "country_iso_code": self.cfg.country_iso_code,
            "country": self.country,
            "tracking_mode": self.tracking_mode,
            "codecarbon_version": data.codecarbon_version,
        }
        if images is not None:
            record["images"] = images
        return record


def start_meter(cfg: EnergyConfig, whole_machine: bool = False, where: str = "train.energy.country_iso_code") -> EnergyMeter | None:
    """A running :class:`EnergyMeter`, or None when energy tracking is off. ``whole_machine``: measure every
    process on the machine (a multi-process run measured from its main process), whatever the config says."""
    return EnergyMeter(cfg, whole_machine, where) if energy_enabled(cfg) else None
