"""A job's state on disk, for `rivulet status`: one small JSON file per running
command under `<data_dir>/status/`, rewritten atomically at every checkpoint
(at most once per `pipeline.checkpoint_interval`) and at the stop.

    {"command": "consume", "source": "spool:/var/lib/rivulet/spool", "pid": 812,
     "state": "running", "started": 1764650000.1, "checkpoint": 1764650123.4,
     "partitions": {"spool:/var/lib/rivulet/spool": {"position": 1200, "watermark_us": ..., "newest_event_us": ...}},
     "totals": {"read": 1250, "valid": 1190, "dead_letters": 60}}

Nothing here is needed for correctness: a lost write only makes `status` older.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Mapping

STATUS_DIR = "status"


def status_path(data_dir: str | os.PathLike[str], command: str, source: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", source).strip("-")[:40] or "source"
    digest = hashlib.sha256(source.encode()).hexdigest()[:8]
    return Path(data_dir) / STATUS_DIR / f"{command}-{slug}-{digest}.json"


class StatusFile:
    def __init__(self, data_dir: str | os.PathLike[str], command: str, source: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = status_path(data_dir, command, source)
        self.clock = clock
        self.state: dict[str, Any] = {
            "command": command, "source": source, "pid": os.getpid(), "state": "running",
            "started": clock(), "checkpoint": None, "partitions": {}, "totals": {},
        }

    def update(self, checkpoints: Mapping[str, tuple[int, int | None]], newest_us: Mapping[str, int],
               summary: Any, state: str = "running", checkpointed: bool = True) -> None:
        partitions = self.state["partitions"]
        for partition, (position, watermark) in checkpoints.items():
            entry = partitions.setdefault(partition, {})
            entry["position"] = position
            if watermark is not None:
                entry["watermark_us"] = watermark
        for partition, newest in newest_us.items():
            partitions.setdefault(partition, {})["newest_event_us"] = newest
        if checkpointed:
            self.state["checkpoint"] = self.clock()
        self.state["state"] = state
        self.state["updated"] = self.clock()
        self.state["totals"] = {"read": summary.read, "valid": summary.valid, "duplicates": summary.duplicates,
                                "dead_letters": sum(summary.reasons.values())}
        self._write()

    def _write(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(self.state, sort_keys=True) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError:
            pass  # status is best effort: never stop a pipeline over it


def read_status_files(data_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    directory = Path(data_dir) / STATUS_DIR
    found = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else ():
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(entry, dict):
            entry["file"] = str(path)
            found.append(entry)
    return found


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
