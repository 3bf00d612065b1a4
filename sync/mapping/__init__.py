"""The mapping engine: YAML files in MAPPINGS_DIR say what each delivery becomes."""

from sync.mapping.evaluate import (
    FieldProblem,
    Plan,
    RecordChange,
    Reward,
    Version,
    entity_label,
    identify,
    parse_document,
    plan,
)
from sync.mapping.spec import Mapping, MappingError, MappingSet, Problem, load_mappings

__all__ = [
    "FieldProblem", "Mapping", "MappingError", "MappingSet", "Plan", "Problem", "RecordChange", "Reward",
    "Version", "entity_label", "identify", "load_mappings", "parse_document", "plan",
]
