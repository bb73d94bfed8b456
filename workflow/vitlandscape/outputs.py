"""Small result files written atomically (a temporary file, then a rename), so that a job
killed mid-write never leaves a truncated result behind."""
import json
from pathlib import Path


def write_json(obj, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)
