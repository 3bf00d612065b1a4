"""The mapping engine: YAML files in MAPPINGS_DIR, checked once into typed objects, say what each
delivery becomes. Pure but for reading the files; imports only sync.core."""

from sync.mapping.evaluate import (
    FieldProblem,
    Plan,
    RecordChange,
    Reward,
    Version,
    entity_label,
    identify,
    plan,
    record_key,
)
from sync.mapping.spec import Mapping, MappingError, MappingSet, Problem, load_mappings

__all__ = [
    "FieldProblem", "Mapping", "MappingError", "MappingSet", "Plan", "Problem", "RecordChange", "Reward",
    "Version", "entity_label", "identify", "load_mappings", "plan", "record_key",
]
