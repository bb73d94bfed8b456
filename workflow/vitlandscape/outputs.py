"""Result files: small ones written atomically (a temporary file, then a rename), so that a
job killed mid-write never leaves a truncated result behind, and the hash that records which
file a result was made from. Imports neither torch nor timm."""
import hashlib
import json
from pathlib import Path


def write_json(obj, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def write_netcdf(ds, path) -> None:
    """Write a small xarray dataset as netCDF, atomically (tmp + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    ds.to_netcdf(tmp, engine="scipy")
    tmp.replace(path)


def sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
