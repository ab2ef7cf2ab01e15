"""Delivery destinations: `configs/destinations/*.yaml`, then any folders the studio adds.

Each file is one destination named after the file (`broadcast-eu.yaml` -> "broadcast-eu"); a file
in a later folder replaces the same-named one from an earlier folder. The keys are the fields of
`media.qc.Destination`; a bad file is refused with one line naming the file, the key and the reason.

    destinations = load_destinations()                      # {"broadcast-eu": Destination(...), ...}
    pick(destinations, ["social", "broadcast-eu"])          # ConfigError for an unknown name

A run loads them once (`run_destinations(settings)`: the shipped files, then
`render.destination_folders`); its jobs carry the Destination objects themselves to the actors.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Sequence

from pydantic import TypeAdapter, ValidationError

from media.qc import Destination

from .settings import CONFIG_DIR, ConfigError, read_yaml_mapping

DESTINATIONS_DIR = CONFIG_DIR / "destinations"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_VALIDATE = TypeAdapter(Destination)


def load_destination(path: str | Path) -> Destination:
    path = Path(path)
    name = path.stem
    if not _NAME.match(name):
        raise ConfigError(f"{path}: file name {name!r} is not a destination name ({_NAME.pattern})")
    data = read_yaml_mapping(path, label="")
    if "name" in data:
        raise ConfigError(f"{path}: name: set by the file name ({name!r}); remove the key")
    try:
        return _VALIDATE.validate_python({**data, "name": name})
    except ValidationError as exc:
        raise ConfigError(f"{path}: " + "; ".join(_reason(e) for e in exc.errors())) from None


def load_destinations(extra_folders: Iterable[str | Path] = ()) -> dict[str, Destination]:
    found: dict[str, Destination] = {}
    for folder in (DESTINATIONS_DIR, *map(Path, extra_folders)):
        if not folder.is_dir():
            raise ConfigError(f"destinations folder {folder}: no such folder")
        for path in sorted(folder.glob("*.yaml")):
            found[path.stem] = load_destination(path)
    return found


def pick(destinations: dict[str, Destination], names: Iterable[str]) -> list[Destination]:
    unknown = [n for n in names if n not in destinations]
    if unknown:
        raise ConfigError(f"unknown destination {', '.join(map(repr, unknown))}; known: {', '.join(sorted(destinations))}")
    return [destinations[n] for n in names]


@dataclass(frozen=True)
class RunDestinations:
    """The destinations one run knows, the ones a shot without its own list gets, and how many
    re-rolls a picture defect may cost."""

    known: dict[str, Destination]
    default: tuple[str, ...] = ()
    max_rerolls: int = 0

    def for_shot(self, names: Sequence[str]) -> tuple[Destination, ...]:
        """The shot's destinations (its own names, validated at intake, else the run's default)."""
        return tuple(pick(self.known, names or self.default))


def run_destinations(settings) -> RunDestinations:
    """Load the destinations once for a run from its HorseSettings; an unknown `render.destinations`
    name is a ConfigError naming the key."""
    known = load_destinations(settings.render.destination_folders)
    try:
        pick(known, settings.render.destinations)
    except ConfigError as exc:
        raise ConfigError(f"render.destinations: {exc}") from None
    return RunDestinations(known, tuple(dict.fromkeys(settings.render.destinations)), settings.render.max_rerolls)


def destination_spec(destination: Destination) -> dict[str, Any]:
    """Every value of a destination that decides its master and QC (for render keys; JSON-ready)."""
    spec = dataclasses.asdict(destination)
    spec.pop("description")
    return {k: str(v) if isinstance(v, Fraction) else v for k, v in spec.items()}


def _reason(error: dict) -> str:
    key = ".".join(str(p) for p in error["loc"])
    if error["type"] == "unexpected_keyword_argument":
        return f"{key}: unknown key"
    message = error["msg"].removeprefix("Value error, ")  # Destination's own checks name their key
    return f"{key}: {message}" if key else message
