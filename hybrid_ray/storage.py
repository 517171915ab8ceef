"""Run storage: a local folder or any pyarrow filesystem URI (s3://, gs://, ...), used the same way."""

from __future__ import annotations

import os
import shutil
import uuid
import zlib
from pathlib import Path

from hybrid_ray.errors import HybridRayError, first_line


class _PyarrowFs:
    """pyarrow.fs, imported on first use: `generate` and `eval` of a local folder need only the path helpers here,
    and pyarrow's import is a few hundred milliseconds of their start-up."""

    def __getattr__(self, name: str):
        import pyarrow.fs

        return getattr(pyarrow.fs, name)


pafs = _PyarrowFs()


def crc32(path: Path) -> int:
    """CRC32 of a local file, read in 16 MiB pieces."""
    crc = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return crc


def is_uri(path: str) -> bool:
    return "://" in path


def normalize(path: str) -> str:
    """Local paths become absolute (Ray needs that); URIs are kept as they are."""
    return path.rstrip("/") if is_uri(path) else str(Path(path).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts]) if is_uri(base) else str(Path(base, *parts))


def parent(path: str) -> str:
    """The folder that holds `path`."""
    return path.rstrip("/").rsplit("/", 1)[0] if is_uri(path) else str(Path(path).parent)


def name(path: str) -> str:
    """The last part of `path`."""
    return path.rstrip("/").rsplit("/", 1)[-1]


def _fs(path: str) -> tuple[pafs.FileSystem, str]:
    try:
        return pafs.FileSystem.from_uri(path) if is_uri(path) else (pafs.LocalFileSystem(), path)
    except Exception as e:
        raise HybridRayError(f"cannot open storage {path}: {first_line(e)}") from e


def check_writable(path: str) -> None:
    """Create the storage folder and write/delete a probe file; one clear error when that fails."""
    fs, root = _fs(path)
    probe = f"{root}/.hybrid-ray-probe-{uuid.uuid4().hex}"
    try:
        fs.create_dir(root, recursive=True)
        with fs.open_output_stream(probe) as f:
            f.write(b"ok")
        fs.delete_file(probe)
    except OSError as e:  # pyarrow's filesystem errors are OSErrors too
        raise HybridRayError(f"storage path {path} is not writable: {first_line(e)}") from e


def write_bytes(path: str, data: bytes) -> None:
    """Write atomically on local disks (temp file + rename); object stores are atomic per object already."""
    if not is_uri(path):
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        tmp.replace(p)
        return
    fs, target = _fs(path)
    fs.create_dir(target.rsplit("/", 1)[0], recursive=True)  # needed by file://, harmless on object stores
    with fs.open_output_stream(target) as f:
        f.write(data)


def read_bytes(path: str) -> bytes:
    fs, target = _fs(path)
    with fs.open_input_stream(target) as f:
        return f.read()


def exists(path: str) -> bool:
    fs, target = _fs(path)
    return fs.get_file_info(target).type != pafs.FileType.NotFound


def list_dirs(path: str) -> list[str]:
    """Names of the sub-folders of `path` ([] when it does not exist)."""
    fs, target = _fs(path)
    if fs.get_file_info(target).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(target, recursive=False))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def file_sizes(path: str) -> dict[str, int]:
    """Sizes of the files directly in folder `path`, by name ({} when it does not exist)."""
    fs, target = _fs(path)
    if fs.get_file_info(target).type != pafs.FileType.Directory:
        return {}
    infos = fs.get_file_info(pafs.FileSelector(target, recursive=False))
    return {i.base_name: i.size for i in infos if i.type == pafs.FileType.File}


def tree_sizes(path: str) -> dict[str, int]:
    """Sizes of every file under folder `path`, by path relative to it with '/' ({} when it does not exist)."""
    fs, target = _fs(path)
    if fs.get_file_info(target).type != pafs.FileType.Directory:
        return {}
    infos = fs.get_file_info(pafs.FileSelector(target, recursive=True))
    base = target.rstrip("/") + "/"
    return {i.path[len(base):]: i.size for i in infos if i.type == pafs.FileType.File}


def list_files(path: str) -> list[str]:
    """Names of the files directly in folder `path`, sorted ([] when it does not exist)."""
    return sorted(file_sizes(path))


def delete_file(path: str) -> None:
    """Delete a file if it exists."""
    fs, target = _fs(path)
    if fs.get_file_info(target).type == pafs.FileType.File:
        fs.delete_file(target)


def move_aside(path: str, suffix: str = ".damaged") -> str:
    """Move a file to `<path><suffix>` (`-1`, `-2`, ... appended when that is taken: never over an earlier one);
    returns where it went."""
    aside, n = f"{path}{suffix}", 0
    while exists(aside):
        n += 1
        aside = f"{path}{suffix}-{n}"
    write_bytes(aside, read_bytes(path))
    delete_file(path)
    return aside


def remove_dir(path: str) -> None:
    """Delete a folder and everything in it; a folder (or a file in it) that is already gone is not an error."""
    if not is_uri(path):
        shutil.rmtree(path, onerror=_gone_is_fine)
        return
    fs, target = _fs(path)
    for _ in range(3):
        try:
            fs.delete_dir(target)
            return
        except FileNotFoundError:
            # gone already, or an object in it went while this listed it: try again while anything is left
            if fs.get_file_info(target).type == pafs.FileType.NotFound:
                return
    fs.delete_dir(target)


def _gone_is_fine(function, path, exc_info) -> None:
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]


def copy_dir(src: str, dst: str) -> None:
    """Copy a folder between any two storages (local <-> URI)."""
    src_fs, src_path = _fs(src)
    dst_fs, dst_path = _fs(dst)
    dst_fs.create_dir(dst_path, recursive=True)
    pafs.copy_files(src_path, dst_path, source_filesystem=src_fs, destination_filesystem=dst_fs)
