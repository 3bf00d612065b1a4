"""Which programs a command that calls Partnero's API acts on, and the mappings each program's
objects go through (its API client is ``PartneroApi.of``).

Each Partnero program has its own API key (one key reads one program). ``backfill``,
``reconcile`` and ``webhooks`` act on the program asked for by name, or on every program that has
a key: one without a key is skipped, and said so, unless it was asked for by name.
"""

from __future__ import annotations

from dataclasses import dataclass

from sync.core.errors import ConfigurationError
from sync.mapping import MappingSet
from sync.settings import Program, Settings, UnknownProgram


@dataclass(frozen=True)
class Chosen:
    """The programs to act on, in PARTNERO_PROGRAMS' order, and those left out for want of a key."""

    programs: tuple[Program, ...]
    skipped: tuple[Program, ...] = ()

    def skipped_lines(self) -> list[str]:
        """A sentence for each program left out, naming the variable that would bring it in."""
        return [f"program {p.name} has no API key ({p.variable('API_KEY')} is not set): skipped" for p in self.skipped]


def choose(settings: Settings, name: str | None = None) -> Chosen:
    """The program called ``name`` (``UnknownProgram`` when there is none, ``ConfigurationError``
    naming its variable when it has no key), or, with no name, every program with an API key
    (``ConfigurationError`` when none has one)."""
    if name is not None:
        program = settings.require_program(name)
        program.require_api_key()
        return Chosen((program,))
    keyed = tuple(p for p in settings.programs if p.partnero.enabled)
    if not keyed:
        if len(settings.programs) == 1:
            settings.programs[0].require_api_key()  # the one program's own sentence
        variables = ", ".join(p.variable("API_KEY") for p in settings.programs)
        raise ConfigurationError(f"no program has an API key: set one of {variables} (the program's Integration -> "
                                 "API page in Partnero; one key belongs to one program)")
    return Chosen(keyed, tuple(p for p in settings.programs if not p.partnero.enabled))


def mappings_of(services, program: str) -> MappingSet:
    """The mappings ``program``'s deliveries go through (``Services.mappings_for``: each program's,
    loaded once at the process's start); ``UnknownProgram`` when the deployment does not serve it
    (any more: a backfill run of a program since taken out of PARTNERO_PROGRAMS)."""
    found = services.mappings_for(program)
    if found is None:
        raise _not_served(services.settings, program)
    return found


def _not_served(settings: Settings, program: str) -> UnknownProgram:
    served = ", ".join(p.name for p in settings.programs)
    return UnknownProgram(f"program {program} is not one this deployment serves (it serves {served}): name it in "
                          "PARTNERO_PROGRAMS again to carry its backfill on")
