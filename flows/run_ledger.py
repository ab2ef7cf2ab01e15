"""What a run has collected so far, kept on the driver's local disk rather than in its memory: per
render key, the fields its version entry takes from this run's outcome, whether it is ok, and the
clip it produced (the run's lineage outputs). A run of 100k jobs then holds no outcome while it
renders; the version is published from the ledger once the stream has ended.

The ledger is scratch, not a record: receipts and the index are what the catalog keeps (a run
that dies loses its ledger, and the next run finds the receipts). SQLite, from the standard
library, because a lookup by key and a scan by insertion order are all it must do.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from pathlib import Path
from typing import Iterator


class RunLedger:
    def __init__(self, directory: str | None = None):
        self._dir = tempfile.TemporaryDirectory(prefix="horse-run-ledger-", dir=directory)
        self._db = sqlite3.connect(Path(self._dir.name) / "ledger.sqlite", check_same_thread=False)
        # Scratch for one process: durability is the receipts' job, not this file's.
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("CREATE TABLE collected (render_key TEXT PRIMARY KEY, ok INTEGER NOT NULL, "
                         "fields TEXT NOT NULL, output TEXT)")
        self.count = 0

    def add(self, render_key: str, fields: dict, ok: bool, output: dict | None = None) -> None:
        """Record one final outcome (render keys are unique within a run)."""
        self._db.execute("INSERT INTO collected VALUES (?, ?, ?, ?)",
                         (render_key, int(ok), json.dumps(fields), None if output is None else json.dumps(output)))
        self.count += 1

    def commit(self) -> None:
        """Write what was added since the last call out of memory (once per chunk)."""
        self._db.commit()

    def fields(self, render_key: str) -> dict | None:
        """The version-entry fields of a key this run collected; None for one it did not."""
        row = self._db.execute("SELECT fields FROM collected WHERE render_key = ?", (render_key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def ok(self, render_key: str) -> bool:
        row = self._db.execute("SELECT ok FROM collected WHERE render_key = ?", (render_key,)).fetchone()
        return bool(row and row[0])

    def outputs(self) -> Iterator[dict]:
        """The clips of the run's ok renders, in the order they were collected."""
        for (output,) in self._db.execute("SELECT output FROM collected WHERE output IS NOT NULL ORDER BY rowid"):
            yield json.loads(output)

    def close(self) -> None:
        self._db.close()
        self._dir.cleanup()

    def __enter__(self) -> "RunLedger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
