"""The mapping engine: YAML files in MAPPINGS_DIR, checked once into typed objects, say what each
delivery becomes. Pure but for reading the files (``loader``): the caller tells the time a delivery
arrived (``plan``, ``evaluate.version_time``); imports only sync.core."""

from sync.mapping.evaluate import (
    FieldProblem,
    Notice,
    Plan,
    RecordChange,
    Reward,
    entity_label,
    identify,
    plan,
    salesforce_key,
)
from sync.mapping.spec import DEFAULT_PROGRAM, Mapping, MappingError, MappingSet, load_mappings

__all__ = [
    "DEFAULT_PROGRAM", "FieldProblem", "Mapping", "Notice", "MappingError", "MappingSet", "Plan", "RecordChange", "Reward",
    "entity_label", "identify", "load_mappings", "plan", "salesforce_key",
]
