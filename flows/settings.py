"""One validated settings object for Horse.

Sources, later ones winning: `configs/defaults.yaml`, the file named by `--config` or
`HORSE_CONFIG`, `HORSE_*` environment variables (nested keys with `__`, e.g.
`HORSE_RAY__ADDRESS=auto`), then command-line flags. Model presets (`configs/models/<name>.yaml`)
resolve `model`.

Every default lives in `configs/defaults.yaml`, the file users read and copy (its comments say
what each key means); the models below only hold types, bounds and checks, so a field has no
default here to drift from it.
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Iterable, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from configs import CONFIG_DIR
from model.prompt import LANGUAGES
from model.speech import missing_whisper_files

if TYPE_CHECKING:
    from media.dialogue import Thresholds

DEFAULTS_FILE = CONFIG_DIR / "defaults.yaml"
PRESETS_DIR = CONFIG_DIR / "models"


class ConfigError(ValueError):
    """Configuration that cannot be used; the message names the key and the problem."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RaySettings(_Section):
    address: str | None
    num_actors: int | None = Field(ge=1)
    gpus_per_actor: float = Field(ge=0)
    cpus_per_actor: float = Field(ge=0)
    cpu_mode: bool
    max_in_flight_per_actor: int = Field(ge=1, le=8)
    overlap: bool
    job_deadline_s: float = Field(gt=0)
    max_retries: int = Field(ge=0)


class PrefectSettings(_Section):
    api_url: str | None
    work_pool: str
    concurrency_limit: int = Field(ge=1)


def _five_cron_fields(value: str) -> str:
    if len(value.split()) != 5:
        raise ValueError(f"cron needs 5 fields (min hour day month weekday), got {value!r}")
    return value


class ScheduleSettings(_Section):
    cron: str
    timezone: str
    manifest_uri: str | None

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA timezone {value!r}") from None
        return value

    _cron = field_validator("cron")(_five_cron_fields)


class MaintenanceSettings(_Section):
    cron: str
    vacuum_retention_hours: int = Field(ge=0)
    gc_grace_hours: float = Field(ge=0)

    _cron = field_validator("cron")(_five_cron_fields)


class RenderSettings(_Section):
    chunk_size: int = Field(ge=1, le=1000)
    failure_threshold: float = Field(ge=0, le=1)
    input_roots: list[str]
    destinations: list[str]  # names checked against the loaded destination files (flows.destinations)
    destination_folders: list[str]
    max_rerolls: int = Field(ge=0, le=8)
    adapter: str | None  # brand adapter of shots without an `adapter` column value (brand or brand@N)
    adapter_strength: float = Field(ge=-4, le=4, allow_inf_nan=False)

    @field_validator("adapter")
    @classmethod
    def _adapter_name(cls, value: str | None) -> str | None:
        from catalog.adapters import parse_name

        if value is not None:
            parse_name(value)  # existence is checked against the store when a run is planned
        return value


ErrorRate = Annotated[float, Field(ge=0, le=1)]
_DESTINATION_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")  # flows.destinations: names are file names


def _language_keys(limits: dict[str, float]) -> dict[str, float]:
    unknown = sorted(set(limits) - set(LANGUAGES))
    if unknown:
        raise ValueError(f"unknown language {', '.join(map(repr, unknown))} (expected one of {', '.join(LANGUAGES)})")
    return limits


class DialogueSettings(_Section):
    recognizer: Literal["whisper", "pocketsphinx"]
    whisper_dir: str | None
    language_confidence: float = Field(gt=0, le=1)
    no_speech_probability: float = Field(gt=0, le=1)
    max_error_rate: dict[str, ErrorRate]
    destination_max_error_rate: dict[str, dict[str, ErrorRate]]

    @field_validator("max_error_rate")
    @classmethod
    def _every_language(cls, limits: dict[str, float]) -> dict[str, float]:
        absent = [code for code in LANGUAGES if code not in _language_keys(limits)]
        if absent:
            raise ValueError(f"no limit for {', '.join(absent)}")
        return limits

    @field_validator("destination_max_error_rate")
    @classmethod
    def _destinations(cls, table: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for name, limits in table.items():
            if not _DESTINATION_NAME.match(name):
                raise ValueError(f"{name!r} is not a destination name ({_DESTINATION_NAME.pattern})")
            try:
                _language_keys(limits)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return table

    @field_validator("whisper_dir")
    @classmethod
    def _staged(cls, folder: str | None) -> str | None:
        missing = missing_whisper_files(folder) if folder else []
        if missing:
            raise ValueError(f"Whisper folder {folder} is incomplete: missing {'; '.join(missing)}")
        return folder

    def thresholds(self, language: str, destinations: Iterable[str] = ()) -> Thresholds:
        """The limits for one clip in `language` bound for `destinations` (the strictest applies)."""
        from media.dialogue import Thresholds  # jiwer and friends: only where clips are heard, not to plan

        base = self.max_error_rate[language]
        limits = [self.destination_max_error_rate.get(name, {}).get(language, base) for name in destinations]
        return Thresholds(max_error_rate=min(limits, default=base), language_confidence=self.language_confidence,
                          no_speech_probability=self.no_speech_probability)


class ReviewSettings(_Section):
    """Review and approval (README "Review, approval, delivery")."""

    user: str | None          # who CLI decisions are by (None: the login name)
    timeout_hours: float = Field(gt=0)  # a review step's pause; after it the run ends, the review stays open
    poll_seconds: int = Field(ge=1, le=60)  # how often a paused review checks for the submitted form


class GCSettings(_Section):
    """What `horse gc` keeps (catalog GC): young blobs, and stage results by their retention."""

    grace_hours: float = Field(ge=0)
    preview_latent_days: float = Field(ge=0)
    stage_result_hours: float = Field(ge=0)


class ConfiguredCost(_Section):
    """Per-stage seconds for one clip, quoted until the index has history (flows.cost)."""

    source: str
    device_type: str
    clip_seconds: float = Field(gt=0)
    uncertainty: float = Field(ge=0, lt=1)
    seconds: dict[str, float]  # cost key (base, sr_540p, decode_1080p, ...) -> seconds for one clip

    @field_validator("seconds")
    @classmethod
    def _known_keys(cls, value: dict[str, float]) -> dict[str, float]:
        from flows.cost import COST_KEYS

        unknown = sorted(set(value) - set(COST_KEYS))
        if unknown:
            raise ValueError(f"unknown stage(s) {', '.join(unknown)}; expected some of {', '.join(COST_KEYS)}")
        if any(seconds < 0 for seconds in value.values()):
            raise ValueError("stage seconds must be >= 0")
        return value


class CostSettings(_Section):
    device_type: str | None
    history_renders: int = Field(ge=1)
    currency: str
    price_per_gpu_hour: dict[str, float]
    configured: ConfiguredCost


class BudgetLimit(_Section):
    """A spend limit; a limit left out is no limit."""

    gpu_hours: float | None = Field(None, gt=0)
    money: float | None = Field(None, gt=0)


class BudgetSettings(_Section):
    run: BudgetLimit
    campaign: BudgetLimit  # every campaign, over all its runs, unless `campaigns` names it
    campaigns: dict[str, BudgetLimit]


class RoutingRule(_Section):
    tag: str
    backend: str


class RoutingSettings(_Section):
    """Which backend renders a shot (flows.routing): "local" (the Happy Horse actors) or an API
    provider of `providers` (name -> preset field overrides, checked by building its spec)."""

    default: str
    rules: list[RoutingRule]
    providers: dict[str, dict[str, Any]]

    @property
    def backends(self) -> tuple[str, ...]:
        return ("local", *self.providers)

    def specs(self) -> dict[str, Any]:
        """{name: horse_actors.backends.ProviderSpec} of every configured provider."""
        from dataclasses import replace

        from horse_actors.backends.spec import PRESETS

        specs = {}
        for name, fields in self.providers.items():
            fields = {k: tuple(v) if isinstance(v, list) else v for k, v in (fields or {}).items()}
            preset = fields.pop("preset", name)
            if name == "local" or preset not in PRESETS:
                raise ValueError(f"providers.{name}: not a preset ({', '.join(PRESETS)}); "
                                 "name one with `preset:`")
            unknown = sorted(set(fields) - (set(PRESETS[preset].__dataclass_fields__) - {"name"}))
            if unknown:  # names only: a value here could be a key someone pasted
                raise ValueError(f"providers.{name}: unknown key {', '.join(unknown)}")
            try:
                specs[name] = replace(PRESETS[preset], name=name, **fields)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"providers.{name}: {exc}") from None
        return specs

    @model_validator(mode="after")
    def _known_backends(self) -> "RoutingSettings":
        self.specs()
        named = [("default", self.default)] + [(f"rules.{i}.backend", r.backend) for i, r in enumerate(self.rules)]
        for key, backend in named:
            if backend not in self.backends:
                raise ValueError(f"{key}: unknown backend {backend!r} (known: {', '.join(self.backends)})")
        return self


class ModelSettings(_Section):
    """A resolved model: a preset from configs/models, or a checkpoint folder with these defaults."""

    name: str = "tiny"
    checkpoint_dir: str | None = None
    profile: Literal["distill", "base"] = "distill"
    device: str = "auto"
    dtype: Literal["bfloat16", "float32", "float16"] = "bfloat16"
    offload: bool = False


class HorseSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HORSE_", env_nested_delimiter="__", extra="forbid")

    store_url: str
    storage_options: dict[str, Any] = Field(repr=False)
    model: str
    ray: RaySettings
    prefect: PrefectSettings
    schedule: ScheduleSettings
    maintenance: MaintenanceSettings
    render: RenderSettings
    dialogue: DialogueSettings
    gc: GCSettings
    review: ReviewSettings
    cost: CostSettings
    budget: BudgetSettings
    routing: RoutingSettings

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Explicit overrides (CLI flags) > HORSE_* environment > YAML files (defaults, then --config).
        return (init_settings, env_settings, _YamlFiles(settings_cls, [DEFAULTS_FILE, *_user_files.get()]))

    def __repr_args__(self):  # never show credentials, wherever the object is printed
        for name, value in super().__repr_args__():
            yield name, ("***" if name == "storage_options" and value else value)

    def resolved_model(self) -> ModelSettings:
        """Turn `model` (preset name or folder) into concrete loading settings."""
        preset_file = PRESETS_DIR / f"{self.model}.yaml"
        if preset_file.is_file():
            try:
                return ModelSettings(name=self.model, **read_yaml_mapping(preset_file))
            except ValidationError as exc:
                raise ConfigError(_describe(exc, prefix=f"{preset_file.name}: ")) from None
        if Path(self.model).expanduser().is_dir():
            return ModelSettings(name=Path(self.model).name, checkpoint_dir=str(Path(self.model).expanduser()))
        raise ConfigError(f"model: {self.model!r} is neither a preset in {PRESETS_DIR} nor a checkpoint folder")


class _YamlFiles(YamlConfigSettingsSource):
    """pydantic-settings' YAML source, deep-merging the files in order, with our error messages."""

    def __init__(self, settings_cls: type[BaseSettings], files: list[Path]):
        super().__init__(settings_cls, yaml_file=files, deep_merge=True)

    def _read_file(self, file_path: Path) -> dict[str, Any]:
        return read_yaml_mapping(file_path)


# The user's config file for one load_settings call (settings sources are chosen per class).
_user_files: ContextVar[list[Path]] = ContextVar("horse_config_files", default=[])


def read_yaml_mapping(path: Path, label: str = "config file ") -> dict[str, Any]:
    """A YAML file whose top level is a mapping (an empty file is an empty one); ConfigError
    naming the file and the problem otherwise."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{label}{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{label}{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{label}{path}: top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _describe(exc: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(root)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{prefix}{key}: {msg}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> HorseSettings:
    """Merge defaults.yaml, the user's config file and HORSE_* env into a validated object.

    `overrides` are CLI flags (None values are ignored); nested keys use dicts.
    Raises ConfigError naming the key and the problem.
    """
    if not DEFAULTS_FILE.is_file():
        raise ConfigError(f"{DEFAULTS_FILE} is missing: the installation is incomplete (reinstall horse)")
    files = []
    config_file = config_file or os.environ.get("HORSE_CONFIG")
    if config_file:
        path = Path(config_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file {path}: no such file")
        files.append(path)
    token = _user_files.set(files)
    try:
        return HorseSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    finally:
        _user_files.reset(token)


def reviewer_name() -> str:
    """Who a decision made here is by when `review.user` is not configured: the login name."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def run_budget_overrides(gpu_hours: float | None, money: float | None) -> dict[str, Any] | None:
    """`load_settings(budget=...)` for a run budget given on the command line or as flow parameters."""
    limits = {k: v for k, v in (("gpu_hours", gpu_hours), ("money", money)) if v is not None}
    return {"run": limits} if limits else None
