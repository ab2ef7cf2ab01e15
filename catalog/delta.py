"""One Delta table under the store root (deltalake): created on first write, commits retried on
conflicts with concurrent writers, every load and commit waiting out an unreachable store.

Schema upgrades: columns added to a table's schema in a later Horse are added to an existing
table by the first commit that needs them, and read as nulls from a table that lacks them.
Layout: a table is created with its partition columns and table properties; a table made by an
older Horse keeps the layout it was made with (reads and commits work on both)."""

from __future__ import annotations

import json
import random
import re
import time
from typing import Any, Callable, TypeVar

import fsspec
import pyarrow as pa
from deltalake import DeltaTable, PostCommitHookProperties
from deltalake.exceptions import CommitFailedError, TableNotFoundError
from deltalake.schema import Schema

from .redact import get_logger
from .root import Root

log = get_logger(__name__)
T = TypeVar("T")
_LOG_FILE = re.compile(r"(\d{20})\.json$")


def commit_metadata(operation: str, extra: dict | None) -> dict[str, str]:
    """Commit metadata: our own strings only (never storage options)."""
    meta = {"horse.operation": operation}
    for k, v in (extra or {}).items():
        if v is not None:
            meta[f"horse.{k}"] = str(v)[:500]
    return meta


def _vanished(exc: BaseException) -> bool:
    """A data file the loaded version lists is gone (delta-rs and pyarrow say so differently)."""
    text = str(exc)
    return isinstance(exc, FileNotFoundError) or ("Object at location" in text and "not found" in text)


def backoff(attempt: int) -> None:
    time.sleep(random.uniform(0, min(2.0, 0.02 * 2 ** min(attempt, 7))))


class DeltaRef:
    """One Delta table under the store root, created on first write, retried on conflicts."""

    def __init__(self, root: Root, key: str, schema: pa.Schema, max_attempts: int = 50, *,
                 partition_by: list[str] | None = None, keep_log: bool = False):
        self.root = root
        self.uri = root.delta_uri(key)
        self.name = key
        if root.protocol == "memory":
            self.fs, self.fs_path = fsspec.filesystem("file"), self.uri
        else:
            self.fs, self.fs_path = root.fs, root.path(key)
        self.schema = schema
        self.partition_by = list(partition_by or [])
        # keep_log: every log entry stays, so time travel reaches any version whose data files
        # vacuum kept (delta-rs otherwise deletes log entries older than 30 days when it writes a
        # checkpoint). Set on new tables, and passed with each of our commits for older tables
        # (alter.set_table_properties hangs against moto's S3 server in deltalake 1.6.6).
        self.properties = {"delta.enableExpiredLogCleanup": "false"} if keep_log else {}
        self.hooks = PostCommitHookProperties(cleanup_expired_logs=False) if keep_log else None
        self.max_attempts = max_attempts
        self._dt: DeltaTable | None = None
        self.conflicts = 0  # commits lost to a concurrent writer and retried, over this handle's life

    def read(self, read: Callable[[DeltaTable], T], default: T) -> T:
        """`read(table)` on the current version, or `default` if the table does not exist yet."""
        return self._moving(lambda: self.root.retrying(
            f"reading {self.name}", lambda: self._attempt(read, default, create=False)))

    def read_table(self, columns: list[str] | None = None, files_where: list[tuple] | None = None) -> pa.Table | None:
        """The rows (only `columns`) in this handle's schema, or None if there is no table yet.

        `files_where` (delta-rs tuple filters) selects the files to read: exactly on partition
        columns, by per-file min/max statistics on others, so the rows read are a superset of the
        matching ones and the caller filters them. Rows are never filtered by pyarrow here: files
        written by MERGE hold string_view columns, whose statistics pyarrow 26 cannot compare
        with the table's string schema (ArrowNotImplementedError)."""
        wanted = self.schema if columns is None else pa.schema([self.schema.field(c) for c in columns])

        def read(dt: DeltaTable) -> pa.Table:
            have = {f.name for f in dt.schema().fields}
            dataset = dt.to_pyarrow_dataset(file_pruning_predicate=files_where)
            table = dataset.to_table(columns=[n for n in wanted.names if n in have])
            for field in wanted:
                if field.name not in have:  # a table written before this column existed
                    table = table.append_column(field, pa.nulls(table.num_rows, field.type))
            return table.select(wanted.names)

        return self.read(read, None)

    def write(self, operation: Callable[[DeltaTable], T]) -> T:
        """`operation(table)` (a commit), creating the table or adding missing columns first if
        needed; a commit that lost to a concurrent writer is retried on the new version."""
        def commit(dt: DeltaTable) -> T:
            return operation(self._upgraded(dt))

        for attempt in range(self.max_attempts):
            try:
                return self._moving(lambda: self.root.retrying(
                    f"committing to {self.name}", lambda: self._attempt(commit, None, create=True)))
            except CommitFailedError as exc:
                self.conflicts += 1
                log.debug("concurrent commit on %s, retry %d: %s", self.name, attempt + 1, exc)
                backoff(attempt)
        raise RuntimeError(f"gave up on {self.name} after {self.max_attempts} conflicting commits")

    def _moving(self, call: Callable[[], T]) -> T:
        """`call()`, started again on the newest version when a data file of the version it
        loaded was vacuumed meanwhile (maintenance compacted and vacuumed while it ran); only
        possible with a vacuum retention shorter than the call, and bounded by max_attempts."""
        for attempt in range(self.max_attempts):
            try:
                return call()
            except Exception as exc:
                if not _vanished(exc) or attempt == self.max_attempts - 1:
                    raise
                log.info("a data file of %s was vacuumed while in use; retrying on the newest version", self.name)
                backoff(attempt)
        raise AssertionError("unreachable")

    def _upgraded(self, dt: DeltaTable) -> DeltaTable:
        have = {f.name for f in dt.schema().fields}
        missing = [f for f in self.schema if f.name not in have]
        if missing:
            log.info("adding columns %s to %s", ", ".join(f.name for f in missing), self.name)
            dt.alter.add_columns(Schema.from_arrow(pa.schema(missing)).fields)
            dt.update_incremental()
        return dt

    def version(self) -> int | None:
        return self.read(lambda dt: dt.version(), None)

    def stored(self) -> dict[str, int]:
        """What the table occupies in the store: every object under its directory (live data
        files, files only older versions use, the log), and the log alone."""
        def scan() -> dict[str, int]:
            self.fs.invalidate_cache(self.fs_path)
            try:
                found = self.fs.find(self.fs_path, detail=True)
            except FileNotFoundError:
                found = {}
            sizes = [(path, int(info.get("size") or 0)) for path, info in found.items()]
            log = [size for path, size in sizes if "/_delta_log/" in path]
            return {"objects": len(sizes), "bytes": sum(size for _, size in sizes),
                    "log_objects": len(log), "log_bytes": sum(log)}

        return self.root.retrying(f"listing {self.name}", scan)

    def files(self) -> pa.Table:
        """The current version's data files: path, size_bytes, partition values (empty if no table)."""
        def read(dt: DeltaTable) -> pa.Table:
            return pa.table(dt.get_add_actions(flatten=True))

        return self.read(read, pa.table({"path": pa.array([], pa.string()), "size_bytes": pa.array([], pa.int64())}))

    def _attempt(self, call: Callable[[DeltaTable], Any], default: Any, create: bool) -> Any:
        try:
            dt = self._load(create)
            return default if dt is None else call(dt)
        except Exception:
            self._dt = None  # a failed commit or a half-done refresh: start from a fresh handle
            raise

    def _load(self, create: bool) -> DeltaTable | None:
        opts = self.root.delta_storage_options
        if self._dt is not None:
            self._dt.update_incremental()
            return self._dt
        try:
            self._dt = DeltaTable(self.uri, storage_options=opts)
        except TableNotFoundError:
            if not create:
                return None
            self._dt = self._create()
        return self._dt

    def _create(self) -> DeltaTable:
        opts = self.root.delta_storage_options
        for attempt in range(self.max_attempts):
            try:
                return DeltaTable.create(self.uri, self.schema, mode="ignore", partition_by=self.partition_by or None,
                                         configuration=self.properties or None, storage_options=opts)
            except (CommitFailedError, TableNotFoundError):
                # Another process created it at the same moment.
                backoff(attempt)
                try:
                    return DeltaTable(self.uri, storage_options=opts)
                except TableNotFoundError:
                    continue
        raise RuntimeError(f"could not create the Delta table {self.name} at {self.root.url}")

    def history(self, limit: int | None = None) -> list[dict]:
        """commitInfo of the newest commits, newest first, read from _delta_log with fsspec
        (DeltaTable.history hangs against moto's S3 server in deltalake 1.6.6)."""
        return self.root.retrying(f"reading the history of {self.name}", lambda: self._history(limit))

    def _history(self, limit: int | None) -> list[dict]:
        log_dir = f"{self.fs_path}/_delta_log"
        self.fs.invalidate_cache(log_dir)
        try:
            names = sorted((p for p in self.fs.ls(log_dir, detail=False) if _LOG_FILE.search(p)), reverse=True)
        except FileNotFoundError:
            return []
        out = []
        for path in names[:limit]:
            for line in self.fs.cat_file(path).splitlines():
                action = json.loads(line)
                if "commitInfo" in action:
                    out.append({**action["commitInfo"], "version": int(_LOG_FILE.search(path).group(1))})
                    break
        return out
