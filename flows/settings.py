"""One validated settings object for Horse.

Sources, later ones winning: the pydantic defaults below, `configs/defaults.yaml`, the file named
by `--config` or `HORSE_CONFIG`, then `HORSE_*` environment variables (nested keys with `__`,
e.g. `HORSE_RAY__ADDRESS=auto`). Model presets (`configs/models/<name>.yaml`) resolve `model`.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULTS_FILE = CONFIG_DIR / "defaults.yaml"


class ConfigError(ValueError):
    """Configuration that cannot be used; the message names the key and the problem."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RaySettings(_Section):
    address: str | None = Field(
        None, description="None: a private local cluster on 127.0.0.1; 'auto' or host:port: join one"
    )
    num_actors: int | None = Field(None, ge=1, description="render actors; None = one per GPU")
    gpus_per_actor: float = Field(1.0, ge=0)
    cpus_per_actor: float = Field(1.0, ge=0)
    cpu_mode: bool = Field(False, description="render on CPU actors (tiny preset, laptops, CI)")
    max_in_flight_per_actor: int = Field(2, ge=1, le=8)
    job_deadline_s: float = Field(1800.0, gt=0)
    max_retries: int = Field(2, ge=0)


class PrefectSettings(_Section):
    api_url: str | None = Field(None, description="None: the embedded (ephemeral) Prefect API")
    work_pool: str = "horse-gpu"
    concurrency_limit: int = Field(1, ge=1, description="flow runs at once per deployment")


class ScheduleSettings(_Section):
    cron: str = "30 1 * * *"
    timezone: str = "Europe/Berlin"
    manifest_uri: str | None = Field(
        None, description="the manifest the nightly deployment renders (e.g. s3://briefs/nightly.parquet)"
    )

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA timezone {value!r}") from None
        return value

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError(f"cron needs 5 fields (min hour day month weekday), got {value!r}")
        return value


class RenderSettings(_Section):
    chunk_size: int = Field(24, ge=1, le=1000, description="jobs per Prefect task run")
    failure_threshold: float = Field(
        0.0, ge=0, le=1, description="fraction of failed shots above which the run ends Failed"
    )
    gpu_seconds_per_clip_second: float = Field(
        8.0, gt=0, description="GPU-time quote when the index has no past timings"
    )
    input_roots: list[str] = Field(
        default_factory=list, description="reference images/audio may only come from under these"
    )


class ModelSettings(_Section):
    """A resolved model: the tiny preset or a checkpoint folder."""

    name: str = "tiny"
    checkpoint_dir: str | None = None
    profile: Literal["distill", "base"] = "distill"
    device: str = "auto"
    dtype: Literal["bfloat16", "float32", "float16"] = "bfloat16"
    offload: bool = False


class HorseSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="HORSE_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    store_url: str = Field("./horse-store", description="catalog root: path, file://, s3://, gs://")
    storage_options: dict[str, Any] = Field(default_factory=dict, repr=False)
    model: str = Field("tiny", description="preset name from configs/models or a checkpoint dir")
    ray: RaySettings = Field(default_factory=RaySettings)
    prefect: PrefectSettings = Field(default_factory=PrefectSettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    render: RenderSettings = Field(default_factory=RenderSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Explicit overrides (CLI flags) > HORSE_* environment > YAML files.
        return (init_settings, env_settings, _YamlSource(settings_cls, _yaml_data.get()))

    def __repr_args__(self):  # never show credentials, wherever the object is printed
        for name, value in super().__repr_args__():
            yield name, ("***" if name == "storage_options" and value else value)

    def resolved_model(self) -> ModelSettings:
        """Turn `model` (preset name or folder) into concrete loading settings."""
        preset_file = CONFIG_DIR / "models" / f"{self.model}.yaml"
        if preset_file.is_file():
            data = _read_yaml(preset_file)
            try:
                return ModelSettings(name=self.model, **data)
            except ValidationError as exc:
                raise ConfigError(_describe(exc, prefix=f"{preset_file.name}: ")) from None
        if self.model == "tiny":
            return ModelSettings()
        if Path(self.model).expanduser().is_dir():
            return ModelSettings(name=Path(self.model).name, checkpoint_dir=str(Path(self.model).expanduser()))
        raise ConfigError(
            f"model: {self.model!r} is neither a preset in {CONFIG_DIR / 'models'} nor a checkpoint folder"
        )


class _YamlSource(PydanticBaseSettingsSource):
    """The merged YAML files, as the lowest-priority settings source."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]):
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field, field_name):  # unused: __call__ returns the whole mapping
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._data


_yaml_data: ContextVar[dict[str, Any]] = ContextVar("horse_yaml_settings", default={})


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


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
    data: dict[str, Any] = _read_yaml(DEFAULTS_FILE) if DEFAULTS_FILE.is_file() else {}
    config_file = config_file or os.environ.get("HORSE_CONFIG")
    if config_file:
        path = Path(config_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file {path}: no such file")
        data = _deep_merge(data, _read_yaml(path))
    token = _yaml_data.set(data)
    try:
        return HorseSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    finally:
        _yaml_data.reset(token)
