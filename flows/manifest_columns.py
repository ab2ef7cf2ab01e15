"""The column pass of manifest validation: the well-formed rows of a Parquet manifest vouched for
a column at a time, so that 100k rows need not each go through pydantic (about 20 µs a row).

A pre-filter, never a second authority: every rule it applies is Shot's own. Nulls, types and the
`Field` constraints (ranges, lengths) are read from the models' fields and checked on whole Arrow
columns; Shot's field validators are called themselves, once per distinct value (a manifest repeats
a handful of languages, aspect ratios, destinations over 100k rows); its model validators are called
on the built shot. A row any of them refuses is not vouched for: `flows.manifest` sends it through
pydantic row by row, which words its errors exactly as for any other row. A manifest whose shape
this pass does not know (a column of another type, a constraint or validator kind it does not
apply) is left to that path whole.
"""

from __future__ import annotations

import inspect
import itertools
import operator
from typing import Any, NamedTuple

import annotated_types as at
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import AllowInfNan, BaseModel

from flows.manifest import DIALOGUE_TYPE, KNOWN_COLUMNS, SCHEMA, DialogueLine, Shot


class _Info(NamedTuple):
    """What the field validators read of pydantic's ValidationInfo. A validator that reads more
    (info.data) fails on it, and its rows go through pydantic."""

    context: dict
    field_name: str


class _Verdict:
    """Which rows the pass vouches for so far: Arrow masks (one per check) and rows refused one by
    one. No Python value ever becomes an Arrow one here (a scalar, a list): pyarrow's conversion
    imports pandas, a quarter of a second."""

    def __init__(self, rows: int):
        self.rows = rows
        self.masks: list[pa.Array] = []
        self.refused: set[int] = set()

    def refuse_parents(self, lists: pa.Array, element_ok: list[bool]) -> None:
        """Refuse the rows of `lists` with an element that `element_ok` marks False."""
        if not all(element_ok):
            parents = pc.list_parent_indices(lists).to_pylist()
            self.refused.update(parents[element] for element, good in enumerate(element_ok) if not good)

    def vouched(self) -> list[bool]:
        if not self.masks:
            flags = [True] * self.rows
        else:
            ok = self.masks[0]
            for mask in self.masks[1:]:
                ok = pc.and_(ok, mask)
            flags = ok.to_pylist()
        for row in self.refused:
            flags[row] = False
        return flags


class _Unknown(Exception):
    """The manifest has a shape this pass does not vouch for: all of it goes through pydantic."""


def _built(model: type[BaseModel], values: dict[str, Any], fields_set: set[str], *,
          _set=object.__setattr__) -> BaseModel:
    """An instance of `model` from already-validated values (every field, in field order): what
    `model_construct(fields_set, **values)` makes, without its per-field default lookups (11 µs a
    Shot, more than validating one)."""
    instance = model.__new__(model)
    _set(instance, "__dict__", values)
    _set(instance, "__pydantic_fields_set__", fields_set)
    _set(instance, "__pydantic_extra__", None)
    _set(instance, "__pydantic_private__", None)
    return instance


def _validators(model: type[BaseModel]) -> tuple[dict[str, list], list]:
    """The model's after-mode field validators by field (callables taking value[, info]) and its
    after-mode model validators; any other kind is a shape this pass does not apply."""
    decorators = model.__pydantic_decorators__
    if (model.__pydantic_post_init__ or model.__private_attributes__ or decorators.validators
            or decorators.root_validators or model.model_config.get("extra") != "forbid"):
        raise _Unknown(model.__name__)
    by_field: dict[str, list] = {}
    for decorator in decorators.field_validators.values():
        if decorator.info.mode != "after":
            raise _Unknown(decorator.cls_var_name)
        function = getattr(model, decorator.cls_var_name)
        takes_info = len(inspect.signature(function).parameters) == 2
        for name in decorator.info.fields:
            by_field.setdefault(name, []).append((function, takes_info))
    after = []
    for decorator in decorators.model_validators.values():
        function = getattr(model, decorator.cls_var_name)
        if decorator.info.mode != "after" or len(inspect.signature(function).parameters) != 1:
            raise _Unknown(decorator.cls_var_name)
        after.append(function)
    return by_field, after


_RANGES = {at.Ge: ("ge", operator.ge), at.Gt: ("gt", operator.gt), at.Le: ("le", operator.le), at.Lt: ("lt", operator.lt)}
_LENGTHS = {at.MinLen: ("min_length", operator.ge), at.MaxLen: ("max_length", operator.le)}
# The Python type pydantic makes of each Arrow type the pass knows (lax mode gives these values as
# they are, lists as tuples); a field annotated otherwise is a shape it does not know.
_ANNOTATIONS = {pa.string(): (str, str | None), pa.int64(): (int,), pa.float64(): (float, float | None),
                pa.bool_(): (bool,), pa.list_(pa.string()): (tuple[str, ...],),
                DIALOGUE_TYPE: (tuple[DialogueLine, ...],)}


def _check_constraints(model: type[BaseModel], name: str, array: pa.Array, verdict: _Verdict) -> None:
    """Refuse the rows whose value breaks one of the field's declared constraints (a number's range,
    a string's length in characters); nulls are the caller's."""
    numeric = pa.types.is_integer(array.type) or pa.types.is_floating(array.type)
    if pa.types.is_floating(array.type):  # stricter than allow_inf_nan: NaN and inf go through pydantic
        verdict.masks.append(pc.or_kleene(pc.is_null(array), pc.is_finite(array)))
    measured = None
    for constraint in model.model_fields[name].metadata:
        if isinstance(constraint, AllowInfNan):
            continue
        bound = (_RANGES if numeric else _LENGTHS if pa.types.is_string(array.type) else {}).get(type(constraint))
        if bound is None:
            raise _Unknown(f"{name}: {constraint!r}")
        limit, within = getattr(constraint, bound[0]), bound[1]
        if measured is None:
            measured = array if numeric else pc.utf8_length(array)
            extremes = pc.min_max(measured).as_py()  # a whole column within bounds needs no row-by-row look
        if extremes["min"] is None or (within(extremes["min"], limit) and within(extremes["max"], limit)):
            continue
        if not isinstance(measured, list):
            measured = measured.to_pylist()
        verdict.refused.update(row for row, value in enumerate(measured) if value is not None and not within(value, limit))


def _column(model: type[BaseModel], name: str, array: pa.Array, validators: dict[str, list],
            context: dict, verdict: _Verdict) -> list | None:
    """The field's validated values for `array` (None where null; None for a column of nulls);
    rows whose value the field refuses are refused in `verdict`."""
    if model.model_fields[name].is_required():
        verdict.masks.append(pc.is_valid(array))
    if array.null_count == len(array):
        return None
    _check_constraints(model, name, array, verdict)
    if pa.types.is_list(array.type):
        verdict.refuse_parents(array, pc.is_valid(pc.list_flatten(array)).to_pylist())  # a null inside a list
        raw = [None if value is None else tuple(value) for value in array.to_pylist()]
    else:
        raw = array.to_pylist()
    field_validators = validators.get(name, [])
    if not field_validators:
        return raw
    if len(field_validators) > 1:
        raise _Unknown(f"{name}: several validators")
    [(function, takes_info)] = field_validators
    info = _Info(context, name)
    distinct = set(raw)
    if len(distinct) == len(raw) and None not in distinct:  # ids, scenes: no value twice
        try:
            return list(map(function, raw, itertools.repeat(info)) if takes_info else map(function, raw))
        except Exception:  # noqa: BLE001 - some value refused: which, below
            pass
    outcome: dict[Any, Any] = {None: None}
    refused = set()
    for value in distinct:  # once per distinct value: a manifest repeats most of them
        if value is not None:
            try:
                outcome[value] = function(value, info) if takes_info else function(value)
            except Exception:  # noqa: BLE001 - any refusal (or surprise) is pydantic's to word
                outcome[value] = None
                refused.add(value)
    if refused:
        verdict.refused.update(row for row, value in enumerate(raw) if value in refused)
    return list(map(outcome.__getitem__, raw))


def _dialogue(array: pa.Array, context: dict, verdict: _Verdict) -> list:
    """Each row's tuple of DialogueLines (None where null); rows with a line DialogueLine refuses
    are refused in `verdict`."""
    validators, after = _validators(DialogueLine)
    if after:
        raise _Unknown("DialogueLine model validators")
    flat = pc.list_flatten(array)
    names = list(DialogueLine.model_fields)
    if [f.name for f in DIALOGUE_TYPE.value_type] != names:
        raise _Unknown("dialogue struct")
    lines_verdict = _Verdict(len(flat))
    lines_verdict.masks.append(pc.is_valid(flat))
    columns = [_column(DialogueLine, name, pc.struct_field(flat, name), validators, context, lines_verdict)
               for name in names]
    columns = [itertools.repeat(None) if values is None else values for values in columns]  # a field of nulls
    line_ok = lines_verdict.vouched()
    verdict.refuse_parents(array, line_ok)
    fields_set = set(names)
    lines = [_built(DialogueLine, dict(zip(names, values)), set(fields_set)) if good else None
             for good, values in zip(line_ok, zip(*columns))]
    counts = [count or 0 for count in pc.list_value_length(array).to_pylist()]
    valid = pc.is_valid(array).to_pylist()
    return [tuple(lines[end - count:end]) if is_valid else None
            for end, count, is_valid in zip(itertools.accumulate(counts), counts, valid)]


def vouched_shots(table: pa.Table, context: dict) -> list[Shot | None] | None:
    """For each row, its Shot when every rule of Shot accepts it (built without re-validation), or
    None when the row must go through pydantic; None for the whole table when its shape is unknown
    here. `context` is the validation context `validate_rows` gives pydantic."""
    try:
        return _vouched(table, context)
    except _Unknown:
        return None


def _vouched(table: pa.Table, context: dict) -> list[Shot | None]:
    names = table.column_names
    if len(set(names)) != len(names):
        raise _Unknown("duplicate column names")
    fields = Shot.model_fields
    for name in names:
        if name in KNOWN_COLUMNS and (table.schema.field(name).type != SCHEMA.field(name).type or
                                      fields[name].annotation not in _ANNOTATIONS.get(SCHEMA.field(name).type, ())):
            raise _Unknown(name)
    if set(fields) - KNOWN_COLUMNS != {"row", "extra"} or any(
            field.is_required() and name not in names for name, field in fields.items() if name in KNOWN_COLUMNS):
        raise _Unknown("columns")
    rows = table.num_rows
    if rows == 0:
        return []
    validators, after = _validators(Shot)
    verdict = _Verdict(rows)
    try:
        table = table.combine_chunks()
    except pa.ArrowInvalid:  # a column past 2 GiB of text cannot be one chunk; the per-row path reads it in batches
        raise _Unknown("size") from None
    given: dict[str, list | None] = {}  # the validated values of each known column (None: all null)
    present: dict[str, list[bool]] = {}  # where a column with some nulls has a value
    for name in names:
        if name not in KNOWN_COLUMNS:
            continue
        array = table.column(name).chunk(0)
        if 0 < array.null_count < rows:
            present[name] = pc.is_valid(array).to_pylist()
        if name == "dialogue":
            given[name] = _dialogue(array, context, verdict)
        else:
            given[name] = _column(Shot, name, array, validators, context, verdict)
    extra_names = [name for name in names if name not in KNOWN_COLUMNS]
    extras = [table.column(name).to_pylist() for name in extra_names]

    field_names = list(fields)  # __dict__ in field order, as validation makes it
    # A field is set (model_fields_set) where its column has a value, as pydantic records it.
    always = {"row", "extra"} | {name for name, values in given.items() if values is not None and name not in present}
    sometimes = list(present.items())
    columns = []
    for name in field_names:
        if name == "row":
            columns.append(range(1, rows + 1))
        elif name == "extra":  # a dict of its own for each shot, as validation makes
            columns.append((dict(zip(extra_names, values)) for values in zip(*extras)) if extras else
                           ({} for _ in range(rows)))
        elif given.get(name) is None:
            columns.append(itertools.repeat(fields[name].get_default(call_default_factory=True)))
        elif name in always:
            columns.append(given[name])
        else:
            default = fields[name].get_default(call_default_factory=True)
            columns.append([value if has else default for value, has in zip(given[name], present[name])])
    shots: list[Shot | None] = []
    for index, (good, values) in enumerate(zip(verdict.vouched(), zip(*columns))):
        if not good:
            shots.append(None)
            continue
        fields_set = set(always)
        for name, has in sometimes:
            if has[index]:
                fields_set.add(name)
        shot = _built(Shot, dict(zip(field_names, values)), fields_set)
        try:
            for validator in after:
                shot = validator(shot)
        except Exception:  # noqa: BLE001 - pydantic words it
            shot = None
        shots.append(shot)
    return shots
