"""Per-run metrics as JSON lines (one record per epoch / event), safe across resumes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class MetricsWriter:
    """Appends JSON records to ``path``; :meth:`truncate_after` drops records of epochs that a
    resumed run will redo, so the file never holds two histories."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=float) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut off by a kill; the epoch it described is redone
        return records

    def truncate_after(self, epoch: int) -> None:
        """Keep only records of epochs ``<= epoch`` (records without an epoch count as 0), and
        drop a last line cut short by a kill."""
        if not self.path.exists():
            return
        text = self.path.read_text()
        records = self.read()
        kept = [r for r in records if r.get("epoch", 0) <= epoch]
        whole = len(records) == len(text.splitlines()) and (not text or text.endswith("\n"))
        if len(kept) == len(records) and whole:
            return  # nothing to drop: leave the file byte for byte as it is
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)
