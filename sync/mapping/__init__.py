"""The mapping engine: YAML files in MAPPINGS_DIR say what each delivery becomes."""

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
