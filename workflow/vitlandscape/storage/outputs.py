"""Result files: written atomically (a temporary beside the result, then a rename), so that a
job killed mid-write or a full disk never leaves a truncated result behind, and the hash that
records which file a result was made from. Imports neither torch nor timm."""
import contextlib
import errno
import hashlib
import json
import shutil
from pathlib import Path


class OutputError(OSError):
    """A result that could not be written: the OS error's errno and reason, `filename` the result."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


def _os_error(err: BaseException) -> OSError | None:
    """The OSError behind `err`, or None: `err` itself, or the one a RuntimeError was raised
    while handling (torch reports a failed write into a Python file that way)."""
    if isinstance(err, OSError):
        return err
    if isinstance(err, RuntimeError) and isinstance(err.__cause__ or err.__context__, OSError):
        return err.__cause__ or err.__context__
    return None


def output_error(path: Path, err: OSError) -> OutputError:
    """`err` as an OutputError naming the result `path`; a file standing where a folder is
    needed is named."""
    if isinstance(err, OutputError):
        return err
    reason = err.strerror or str(err)
    if err.errno in (errno.EEXIST, errno.ENOTDIR):
        blocker = next((p for p in path.parents if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            reason = f"{blocker} is a file, not a folder"
    return OutputError(err.errno, reason, str(path))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def replacing(path, directory: bool = False):
    """Yield a temporary path beside `path` (same file system, so the rename is atomic) to
    write the result into; when the block succeeds it becomes `path`. When it fails the
    temporary is removed and a previous `path` stays as it was; an OS error (no space left,
    permission denied, read-only file system, a file where a folder should be) is raised as
    an OutputError naming `path`. `directory`: the result is a folder (a Zarr store)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove(tmp)  # left over from a killed job
        yield tmp
        if directory:
            _remove(path)
        tmp.replace(path)
    except BaseException as err:
        with contextlib.suppress(OSError):  # nothing to remove where nothing could be written
            _remove(tmp)
        cause = _os_error(err)
        if cause is None:
            raise
        raise output_error(path, cause) from err


def write_json(obj, path) -> None:
    text = json.dumps(obj, indent=2) + "\n"  # serialised first: an unserialisable object writes nothing
    with replacing(path) as tmp:
        tmp.write_text(text)


def write_yaml(config: dict, path) -> None:
    """A config as YAML, keys in their order (the write-config stage)."""
    import yaml

    text = yaml.safe_dump(config, sort_keys=False)
    with replacing(path) as tmp:
        tmp.write_text(text)
    print(f"wrote {path}")


def write_netcdf(ds, path) -> None:
    """Write a small xarray dataset as netCDF, atomically (tmp + rename)."""
    with replacing(path) as tmp:
        ds.to_netcdf(tmp, engine="scipy")


def sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_identity(checkpoint, checkpoint_format: str) -> dict:
    """The checkpoint a result was computed from, as every result file records it."""
    return {"checkpoint": str(checkpoint), "checkpoint_sha256": sha256(checkpoint),
            "checkpoint_format": checkpoint_format}


def made_for(checkpoint, meta: dict, what: str) -> str:
    """The checkpoint's sha256, after checking that a file recorded for a checkpoint (its
    metadata `meta`: directions, snapshots) was recorded for this one; `what` names the file."""
    checkpoint_sha = sha256(checkpoint)
    if meta.get("checkpoint_sha256") not in (None, checkpoint_sha):
        raise ValueError(f"{what} for checkpoint sha256 {meta['checkpoint_sha256']}, but {checkpoint} has "
                         f"{checkpoint_sha}")
    return checkpoint_sha


def write_safetensors(tensors: dict, metadata: dict, path) -> None:
    """`tensors` and `metadata` (strings) as a safetensors file, atomically and with the same
    bytes for the same content (canonical_header). safetensors imports torch: imported here."""
    import safetensors.torch
    blob = safetensors.torch.save(tensors, metadata=metadata)
    with replacing(path) as tmp:
        Path(tmp).write_bytes(canonical_header(blob))


def canonical_header(blob: bytes) -> bytes:
    """The safetensors bytes with the JSON header's keys sorted. safetensors writes the metadata
    from a Rust HashMap, whose order changes from process to process: the same directions would
    get another sha256 on every run, and that sha256 goes into every tile and surface."""
    n = int.from_bytes(blob[:8], "little")
    text = json.dumps(json.loads(blob[8:8 + n]), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > n:
        raise ValueError("safetensors header grew when its keys were sorted")
    return blob[:8] + text.ljust(n) + blob[8 + n:]
