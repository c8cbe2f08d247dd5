"""Scenario files, split by job: the schema (`schema`), `--set` overrides (`overrides`), loading and the catalog
of shipped scenarios (`loading`), readable errors (`errors`). Everything a caller needs is re-exported here."""

from __future__ import annotations

from fedsim.scenario.loading import Scenario, describe, shipped_scenarios
from fedsim.scenario.overrides import apply_overrides, parse_overrides
from fedsim.scenario.schema import (
    EMBEDDED_DATASETS,
    IMAGE_SOURCES,
    MODELS,
    PARTITIONERS,
    BagsSection,
    ClientDPPrivacy,
    ClientSection,
    DataSection,
    DPSGDPrivacy,
    FaultsSection,
    FeatureSkewSection,
    GeneratorSection,
    ImagesSection,
    ModelSection,
    OutputSection,
    PartitionerSection,
    PrivacySection,
    ResourcesSection,
    RunSection,
    StrategySection,
    TransformSection,
    UnlearningRequest,
    UnlearningSection,
)

__all__ = [
    "EMBEDDED_DATASETS",
    "IMAGE_SOURCES",
    "MODELS",
    "PARTITIONERS",
    "BagsSection",
    "ClientDPPrivacy",
    "ClientSection",
    "DPSGDPrivacy",
    "DataSection",
    "FaultsSection",
    "FeatureSkewSection",
    "GeneratorSection",
    "ImagesSection",
    "ModelSection",
    "OutputSection",
    "PartitionerSection",
    "PrivacySection",
    "ResourcesSection",
    "RunSection",
    "Scenario",
    "StrategySection",
    "TransformSection",
    "UnlearningRequest",
    "UnlearningSection",
    "apply_overrides",
    "describe",
    "parse_overrides",
    "shipped_scenarios",
]
