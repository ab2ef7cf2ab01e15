"""Campaign manifests: the Parquet schema of DESIGN.md §6, validated row by row.

A manifest is one row per shot. Bad rows never stop good ones: each problem becomes a
`RowError` (row number, column, reason) and the row is skipped. Only a file that cannot be read
at all, or lacks a required column, is an error for the whole manifest (`ManifestError`). The
well-formed rows of a Parquet manifest are vouched for a column at a time by Shot's own rules
(`flows.manifest_columns`); every other row goes through pydantic here, row by row.

This is the one validator: what `horse manifest validate` accepts, planning and rendering accept
too, reference files included (they must exist under the configured `render.input_roots`) and
destination names (those of the loaded destination files, `flows.destinations`) and brand adapter
names (`adapter`: `brand` or `brand@N`, registered in the store's catalog; `catalog.adapters`).
CSV and YAML briefs convert to the same Parquet schema (`flows.briefs`).
"""

from __future__ import annotations

import gc
import hashlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Collection, Iterable, Sequence

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from catalog.ids import InvalidId, validate_id
from model.geometry import ASPECT_RATIOS, RESOLUTIONS
from model.prompt import normalize_language as _normalize_language

# A manifest repeats a handful of language codes over 100k rows: each is normalised once.
normalize_language = lru_cache(maxsize=1024)(_normalize_language)

# The released model was trained on clips of a few seconds; upstream examples render 4-10 s.
MIN_DURATION_S, MAX_DURATION_S = 1.0, 10.0
MAX_ADAPTER_STRENGTH = 4.0  # |strength|: far past what LoRA strengths are used at (about 0 to 1.5)
MAX_TAKES = 16

DIALOGUE_TYPE = pa.list_(pa.struct([("speaker", pa.string()), ("language", pa.string()), ("line", pa.string())]))
SCHEMA = pa.schema(
    [
        ("campaign_id", pa.string()),
        ("shot_id", pa.string()),
        ("scene", pa.string()),
        ("dialogue", DIALOGUE_TYPE),
        ("languages", pa.list_(pa.string())),
        ("aspect_ratios", pa.list_(pa.string())),
        ("resolution", pa.string()),
        ("duration_s", pa.float64()),
        ("takes", pa.int64()),
        ("seed", pa.int64()),
        ("background_sound", pa.string()),
        ("reference_image_uri", pa.string()),
        ("reference_audio_uri", pa.string()),
        ("priority", pa.int64()),
        ("tags", pa.list_(pa.string())),
        ("preview", pa.bool_()),
        ("destinations", pa.list_(pa.string())),
        ("must_say", pa.list_(pa.string())),
        ("backend", pa.string()),
        ("adapter", pa.string()),
        ("adapter_strength", pa.float64()),
    ]
)
REQUIRED_COLUMNS = ("campaign_id", "shot_id", "scene", "languages", "aspect_ratios", "resolution", "duration_s", "takes", "seed")
KNOWN_COLUMNS = set(SCHEMA.names)


@contextmanager
def gc_paused():
    """Python's cyclic garbage collector paused for a bulk build. Validating 100k rows or planning
    400k variants allocates millions of objects that form no cycles, and every full collection
    walks all of them: about 40 % of a big plan's CPU time.

    When it ends, what was built goes straight into the oldest generation (freeze then unfreeze:
    two list splices), where it is walked only by full collections, which come as rarely as the
    long-lived objects let them; left young, the first collection after the pause would walk all
    of it (0.4 s of a 400k-job plan) and the next two generations' again. Cycles made meanwhile are
    collected by the next full collection. (Not when something else has frozen objects: unfreezing
    would hand its objects back to the collector.)"""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            if gc.get_freeze_count() == 0:
                gc.freeze()
                gc.unfreeze()
            gc.enable()


class ManifestError(ValueError):
    """The manifest as a whole cannot be used (unreadable, not Parquet, a required column missing)."""


@dataclass(frozen=True)
class RowError:
    row: int  # 1-based data row number, as a person counts rows in a spreadsheet
    column: str
    reason: str
    shot_id: str | None = None

    def __str__(self) -> str:
        shot = f" (shot {self.shot_id})" if self.shot_id else ""
        return f"row {self.row}{shot}, column {self.column}: {self.reason}"


class DialogueLine(BaseModel):
    model_config = ConfigDict(extra="forbid")
    speaker: str = Field(min_length=1, max_length=200)
    language: str
    line: str = Field(min_length=1, max_length=2000)

    @field_validator("language")
    @classmethod
    def _language(cls, value: str) -> str:
        return normalize_language(value)


def reference_path(uri: str, input_roots: Sequence[str]) -> str:
    """The resolved local path of a reference file, which must exist under one of the input
    roots (never ../ out of them)."""
    path = Path(uri.removeprefix("file://")).resolve()
    allowed = [Path(root).resolve() for root in input_roots]
    if not any(path.is_relative_to(root) for root in allowed):
        where = ", ".join(map(str, allowed)) or "none configured (render.input_roots)"
        raise ValueError(f"{uri} is outside the allowed input roots ({where})")
    if not path.is_file():
        raise ValueError(f"{uri} does not exist")
    return str(path)


class Shot(BaseModel):
    """One validated manifest row. A shot without dialogue may have no languages: it then has no
    language axis and renders once per aspect ratio and take (B-roll)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    row: int
    campaign_id: str
    shot_id: str
    scene: str = Field(min_length=1, max_length=4000)
    dialogue: tuple[DialogueLine, ...] = ()
    languages: tuple[str, ...] = ()
    aspect_ratios: tuple[str, ...]
    resolution: str
    duration_s: float = Field(ge=MIN_DURATION_S, le=MAX_DURATION_S)
    takes: int = Field(ge=1, le=MAX_TAKES)
    seed: int = Field(ge=0, lt=2**31)
    background_sound: str | None = Field(None, max_length=1000)
    reference_image_uri: str | None = None  # validated: a resolved path under the input roots
    reference_audio_uri: str | None = None
    priority: int = 0
    tags: tuple[str, ...] = ()
    preview: bool = False  # render 256p previews of every take, keeping their base latents to promote
    destinations: tuple[str, ...] = ()  # delivery QC + masters; empty: the run's render.destinations
    must_say: tuple[str, ...] = ()  # product names and terms the dialogue gate checks on their own
    backend: str | None = None  # "local" or an API provider of routing.providers; None: routing rules decide
    adapter: str | None = None  # brand adapter (brand or brand@N); None: the run's render.adapter
    adapter_strength: float | None = Field(None, ge=-MAX_ADAPTER_STRENGTH, le=MAX_ADAPTER_STRENGTH,
                                           allow_inf_nan=False)  # None: the run's render.adapter_strength
    extra: dict[str, Any] = Field(default_factory=dict)  # unknown columns: kept for lineage

    @field_validator("campaign_id", "shot_id")
    @classmethod
    def _id(cls, value: str, info) -> str:
        return validate_id(value, info.field_name)

    @field_validator("scene")
    @classmethod
    def _scene(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()

    @field_validator("languages")
    @classmethod
    def _languages(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _unique(normalize_language(code) for code in value)

    @field_validator("aspect_ratios")
    @classmethod
    def _aspects(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("needs at least one aspect ratio")
        for ratio in value:
            if ratio not in ASPECT_RATIOS:
                raise ValueError(f"unknown aspect ratio {ratio!r}: expected one of {', '.join(ASPECT_RATIOS)}")
        return _unique(value)

    @field_validator("resolution")
    @classmethod
    def _resolution(cls, value: str) -> str:
        if value not in RESOLUTIONS:
            raise ValueError(f"unknown resolution {value!r}: expected one of {', '.join(RESOLUTIONS)}")
        return value

    @field_validator("destinations")
    @classmethod
    def _known_destinations(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        from flows.destinations import load_destinations, pick

        known = (info.context or {}).get("destinations")
        pick(dict.fromkeys(known if known is not None else load_destinations()), value)  # unknown: ValueError
        return _unique(value)

    @field_validator("must_say")
    @classmethod
    def _terms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        terms = _unique(term.strip() for term in value)
        for term in terms:
            if not term or len(term) > 200:
                raise ValueError(f"term {term!r} must be 1-200 characters")
        return terms

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str | None, info: ValidationInfo) -> str | None:
        known = (info.context or {}).get("backends")
        if known is None:  # no configuration at hand: the shipped defaults
            from horse_actors.backends.spec import PRESETS

            known = ("local", *PRESETS)
        if value is not None and value not in known:
            raise ValueError(f"unknown backend {value!r} (configured: {', '.join(known)})")
        return value

    @field_validator("adapter")
    @classmethod
    def _registered_adapter(cls, value: str | None, info: ValidationInfo) -> str | None:
        from catalog.adapters import parse_name

        if value is None:
            return None
        parse_name(value)  # InvalidId (a ValueError) naming the problem
        known = (info.context or {}).get("adapters") or ()
        if value not in known:
            raise ValueError(f"unknown adapter {value!r} (registered: {', '.join(sorted(known)) or 'none'}; "
                             "see horse adapter list)")
        return value

    @field_validator("reference_image_uri", "reference_audio_uri")
    @classmethod
    def _under_input_roots(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else reference_path(value, (info.context or {}).get("input_roots", ()))

    @model_validator(mode="after")
    def _dialogue_covers_languages(self) -> "Shot":
        if self.dialogue:
            if not self.languages:
                raise ValueError("languages: needs at least one language for its dialogue lines")
            spoken = {line.language for line in self.dialogue}
            missing = [code for code in self.languages if code not in spoken]
            if missing:
                raise ValueError(
                    f"languages: no dialogue lines for {', '.join(missing)} (every language variant needs its own lines)"
                )
        if self.must_say:
            self._terms_in_lines()
        return self

    def _terms_in_lines(self) -> None:
        """Every must-say term is in every language's lines (as the gate will listen for it), else no
        clip of that language could ever pass."""
        from media.dialogue import missing_terms, normalize

        if not self.dialogue:
            raise ValueError("must_say: the shot has no dialogue lines to say the terms in")
        for language in self.languages:
            lines = normalize(" ".join(line.line for line in self.lines_for(language)), language)
            try:
                absent = missing_terms(lines, self.must_say, language)
            except ValueError as exc:  # a term with nothing to listen for
                raise ValueError(f"must_say: {exc}") from None
            if absent:
                raise ValueError(f"must_say: {', '.join(map(repr, absent))} not in the {language} line")

    def lines_for(self, language: str) -> list[DialogueLine]:
        return [line for line in self.dialogue if line.language == language]


def _unique(values) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


@dataclass
class Manifest:
    uri: str
    sha256: str
    shots: list[Shot]
    errors: list[RowError] = field(default_factory=list)
    rows: int = 0
    data: bytes = field(default=b"", repr=False)  # the exact bytes, kept with the campaign version

    @property
    def campaign_ids(self) -> list[str]:
        return sorted({shot.campaign_id for shot in self.shots})


def _field_of(error: dict) -> str:
    loc = [str(part) for part in error.get("loc", ()) if not isinstance(part, int)]
    return loc[0] if loc else "(row)"


def _reason(error: dict) -> str:
    message = error["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message


def validate_rows(records: Iterable[dict[str, Any]], input_roots: Sequence[str] = (),
                  destinations: Collection[str] | None = None,
                  backends: Collection[str] | None = None,
                  adapters: Collection[str] = ()) -> tuple[list[Shot], list[RowError]]:
    """Validate manifest rows (dicts keyed by column) into Shots and per-row errors; reference
    files are accepted only under `input_roots`, destination names only from `destinations`
    (None: the shipped destination files), backends only from `backends` (None: the shipped
    routing.providers), adapter names only from `adapters` (the store's `AdapterRegistry.names()`)."""
    context = validation_context(input_roots, destinations, backends, adapters)
    return _collect(((number, None, record) for number, record in enumerate(records, start=1)), context)


def validation_context(input_roots: Sequence[str] = (), destinations: Collection[str] | None = None,
                       backends: Collection[str] | None = None, adapters: Collection[str] = ()) -> dict[str, Any]:
    """What Shot's validators read besides the row (pydantic's validation context)."""
    return {"input_roots": input_roots, "destinations": destinations, "backends": backends, "adapters": adapters}


def _collect(rows: Iterable[tuple[int, Shot | None, dict[str, Any] | None]],
             context: dict[str, Any]) -> tuple[list[Shot], list[RowError]]:
    """Shots and errors from (row number, shot already vouched for or None, record to validate),
    in row order; a (campaign_id, shot_id) seen on an earlier good row is a duplicate."""
    shots: list[Shot] = []
    errors: list[RowError] = []
    seen: dict[tuple[str, str], int] = {}
    for number, shot, record in rows:
        if shot is None:
            shot = _validated(number, record, context, errors)
            if shot is None:
                continue
        key = (shot.campaign_id, shot.shot_id)
        if key in seen:
            errors.append(RowError(number, "shot_id", f"duplicate of row {seen[key]} ({shot.campaign_id}/{shot.shot_id})", shot.shot_id))
            continue
        seen[key] = number
        shots.append(shot)
    return shots, errors


def _validated(number: int, record: dict[str, Any], context: dict[str, Any], errors: list[RowError]) -> Shot | None:
    """One row through pydantic: its Shot, or None with its problems appended to `errors`."""
    if record.keys() <= KNOWN_COLUMNS:  # the common case: no column of its own
        known = {k: v for k, v in record.items() if v is not None}
        known["extra"] = {}
    else:
        known = {k: v for k, v in record.items() if k in KNOWN_COLUMNS and v is not None}
        known["extra"] = {k: v for k, v in record.items() if k not in KNOWN_COLUMNS}
    known["row"] = number
    shot_id = record.get("shot_id") if isinstance(record.get("shot_id"), str) else None
    try:
        return Shot.model_validate(known, context=context)
    except ValidationError as exc:
        for err in exc.errors():
            column = _field_of(err)
            reason = _reason(err)
            if err["type"] == "missing":
                reason = "is required"
            for named in ("languages", "must_say"):  # the shot's own checks name their column
                if column == "(row)" and reason.startswith(f"{named}:"):
                    column, reason = named, reason.removeprefix(f"{named}: ")
            errors.append(RowError(number, column, reason, shot_id))
    except (InvalidId, ValueError) as exc:  # raised outside pydantic's wrapping
        errors.append(RowError(number, "(row)", str(exc), shot_id))
    return None


def read_manifest_bytes(uri: str, storage_options: dict | None = None) -> bytes:
    try:
        with fsspec.open(uri, "rb", **(storage_options or {})) as f:
            return f.read()
    except FileNotFoundError:
        raise ManifestError(f"manifest {uri}: no such file") from None
    except OSError as exc:
        raise ManifestError(f"manifest {uri}: cannot be read ({type(exc).__name__})") from None


def read_manifest(uri: str, storage_options: dict | None = None, input_roots: Sequence[str] = (),
                  destinations: Collection[str] | None = None, backends: Collection[str] | None = None,
                  adapters: Collection[str] = ()) -> Manifest:
    """Read and validate a Parquet manifest from any fsspec URL or path."""
    return parse_manifest(read_manifest_bytes(uri, storage_options), uri, input_roots, destinations, backends, adapters)


def arrow_owned_copy(data: bytes) -> pa.Buffer:
    """`data` copied into memory that Arrow owns.

    `read_table` returns before its readers are torn down: the last references to them are
    dropped on Arrow's IO threads. A reader over Python memory (a bytes object, a BytesIO) then
    needs the GIL to let go of it, and if the interpreter is exiting by then, Python ends that
    thread inside a C++ destructor: std::terminate, SIGABRT, exit 134 after the command's output
    (apache/arrow#33975). Over Arrow's own memory the teardown never touches Python.
    """
    sink = pa.BufferOutputStream()
    sink.write(data)
    return sink.getvalue()


def parse_manifest(data: bytes, uri: str, input_roots: Sequence[str] = (),
                   destinations: Collection[str] | None = None, backends: Collection[str] | None = None,
                   adapters: Collection[str] = ()) -> Manifest:
    """Validate manifest bytes; `uri` only names the file in messages."""
    try:
        # ParquetFile, not read_table: read_table goes through pyarrow.dataset, which imports pandas (a
        # second of a small plan's start).
        table = pq.ParquetFile(pa.BufferReader(arrow_owned_copy(data))).read()
    except (pa.ArrowInvalid, OSError) as exc:
        raise ManifestError(f"manifest {uri}: not a Parquet file ({exc})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise ManifestError(f"manifest {uri}: missing required column(s) {', '.join(missing)}")
    from flows.manifest_columns import vouched_shots  # it builds on this module's Shot

    context = validation_context(input_roots, destinations, backends, adapters)
    with gc_paused():
        # The well-formed rows are vouched for a column at a time; the rest (or all, for a manifest
        # of a shape the column pass does not know) go through pydantic row by row.
        vouched = vouched_shots(table, context)
        if vouched is None:
            rows = ((number, None, record) for number, record in enumerate(_records(table), start=1))
        else:
            records = _records(_doubtful(table, vouched))
            rows = ((index + 1, shot, None if shot is not None else next(records)) for index, shot in enumerate(vouched))
        shots, errors = _collect(rows, context)
    return Manifest(uri=uri, sha256=hashlib.sha256(data).hexdigest(), shots=shots, errors=errors, rows=table.num_rows,
                    data=data)


def _doubtful(table: pa.Table, vouched: list[Shot | None]) -> pa.Table:
    """The rows of `table` the column pass did not vouch for, in order: sliced, run by run (`take`
    with a list of row numbers would make them an Arrow array, which imports pandas)."""
    runs: list[list[int]] = []  # [start, length] of each run of doubtful rows
    for index in (index for index, shot in enumerate(vouched) if shot is None):
        if runs and runs[-1][0] + runs[-1][1] == index:
            runs[-1][1] += 1
        else:
            runs.append([index, 1])
    return pa.concat_tables([table.slice(start, length) for start, length in runs]) if runs else table.slice(0, 0)


def _records(table: pa.Table) -> Iterable[dict[str, Any]]:
    """The table's rows as dicts keyed by column, batch by batch: only one batch of rows is ever held
    as Python objects besides the shots. (RecordBatch.to_pylist builds each row by index lookups into
    its columns: zipped columns are cheaper.)"""
    names = table.column_names
    return (dict(zip(names, values)) for batch in table.to_batches(max_chunksize=4096)
            for values in zip(*[column.to_pylist() for column in batch.columns]))


def write_manifest(records: list[dict[str, Any]], path: str | Path) -> Path:
    """Write rows as a Parquet manifest with the standard schema (plus any extra columns)."""
    extra_fields = [pa.field(k, pa.string()) for k in sorted({k for r in records for k in r} - KNOWN_COLUMNS)]
    schema = pa.schema(list(SCHEMA) + extra_fields)
    table = pa.Table.from_pylist(records, schema=schema)
    path = Path(path)
    pq.write_table(table, path)
    return path
