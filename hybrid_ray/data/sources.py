"""Where documents come from: one function that yields texts for any source string, one that names the source.

Source strings: `stdlib` (this Python's standard-library source files), `hf:NAME[:CONFIG][@SPLIT]` (a streamed
Hugging Face dataset), or a local `.txt`/`.jsonl`/`.json`/`.parquet` file, folder or glob. `mqar` lives in synthetic.py.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import platform
import re
import sysconfig
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hybrid_ray.data.hub import hub_available
from hybrid_ray.errors import DataError, first_line, suggest
from hybrid_ray.spec import DataSpec, Source

SUPPORTED = (".txt", ".jsonl", ".json", ".parquet")
_GLOB_CHARS = set("*?[")


def iter_documents(spec: DataSpec) -> Iterator[str]:
    """Yield the source's documents as non-empty strings, in a fixed order."""
    source = spec.parsed
    if source.kind == "stdlib":
        yield from _stdlib_documents()
    elif source.kind == "hf":
        yield from _hf_documents(source, spec.text_field)
    elif source.kind == "mqar":
        raise DataError("mqar is a synthetic task with no documents; load it with hybrid_ray.data.prepare")
    else:
        skipped = 0
        for path in local_files(source.path):
            if path.suffix == ".txt" and _looks_binary(path):
                skipped += 1
                continue
            yield from _file_documents(path, spec.text_field)
        if skipped:
            warnings.warn(f"skipped {skipped} binary file(s) named .txt in {source.path}")


def source_identity(spec: DataSpec) -> dict[str, Any]:
    """What identifies the source's content for the shard cache key (no network, no reading of file contents)."""
    source = spec.parsed
    if source.kind == "stdlib":
        return {"kind": "stdlib", "python": platform.python_version(), "path": str(stdlib_dir()),
                "selection": STDLIB_SELECTION}
    if source.kind == "hf":
        return {"kind": "hf", "name": source.hf_name, "config": source.hf_config, "split": source.hf_split}
    if source.kind == "mqar":
        return {"kind": "mqar", "source": source.text}
    files = local_files(source.path)
    listing = "".join(f"{p}\t{p.stat().st_size}\t{p.stat().st_mtime_ns}\n" for p in files)
    return {"kind": "files", "source": spec.source, "files": len(files),
            "digest": hashlib.blake2b(listing.encode(), digest_size=16).hexdigest()}


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


# Machine-written modules (codec tables, build variables, doc dumps) are not code anyone wrote: a validation
# document drawn from them made the default run's validation loss sit 1.2 nats above its training loss.
_GENERATED = re.compile(r"gencodec\.py|auto-?generated|this file (is|was) (automatically )?generated|"
                        r"generated (automatically )?(by|from) \S+\.(py|txt)|do not edit", re.IGNORECASE)
STDLIB_SELECTION = 2  # bump when the rule below changes: it is part of the shard cache key


def stdlib_files() -> list[Path]:
    """The standard library's hand-written .py files, sorted by relative path, without installed third-party
    packages and without generated modules (`_sysconfigdata*`, `pydoc_data/`, codec tables and the like)."""
    root = stdlib_dir()
    rel = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py"))
    keep = [r for r in rel if not {"site-packages", "dist-packages"} & set(r.split("/"))
            and not r.startswith(("_sysconfigdata", "pydoc_data/"))]
    return [root / r for r in keep if not _GENERATED.search((root / r).read_bytes()[:1500].decode("utf-8", "replace"))]


def local_files(source: str) -> list[Path]:
    """The files a path, folder or glob names (folders recursively), sorted; DataError when there are none."""
    expanded = os.path.expanduser(source)
    if _GLOB_CHARS & set(source):
        matches = [Path(m) for m in sorted(glob.glob(expanded, recursive=True))]
        files = [f for m in matches for f in (_folder_files(m) if m.is_dir() else [m]) if f.suffix in SUPPORTED]
        if not files:
            raise DataError(f"no {'/'.join(SUPPORTED)} files match {source!r}")
        return [f.resolve() for f in files]
    path = Path(expanded)
    if path.is_dir():
        files = _folder_files(path)
        if not files:
            raise DataError(f"folder {source} has no {'/'.join(SUPPORTED)} files")
        return [f.resolve() for f in files]
    if path.is_file():
        if path.suffix not in SUPPORTED:
            raise DataError(f"unsupported file type {path.suffix or '(none)'!r} for {source}; use {', '.join(SUPPORTED)}")
        return [path.resolve()]
    raise DataError(f"data source not found: {source} (expected stdlib, mqar, hf:NAME, or an existing file/folder/glob)")


def _folder_files(folder: Path) -> list[Path]:
    # hidden entries (.git, .cache, ...) are never data
    rel = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.suffix in SUPPORTED)
    return [folder / r for r in rel if not any(part.startswith(".") for part in r.split("/")) and (folder / r).is_file()]


def _looks_binary(path: Path) -> bool:
    """NUL bytes in the first 8 KiB: no text file has them (UTF-16 text is not supported either)."""
    try:
        with path.open("rb") as f:
            return b"\0" in f.read(8192)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e


def _stdlib_documents() -> Iterator[str]:
    for path in stdlib_files():
        text = path.read_bytes().decode("utf-8", errors="replace")  # a few test files are deliberately not UTF-8
        if text:
            yield text


def _file_documents(path: Path, field: str) -> Iterator[str]:
    if path.suffix == ".txt":
        text = _read_text(path)
        if text:
            yield text
    elif path.suffix == ".jsonl":
        yield from _jsonl_documents(path, _read_text(path).splitlines(), field)
    elif path.suffix == ".json":
        yield from _json_documents(path, field)
    else:
        yield from _parquet_documents(path, field)


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e


def _jsonl_documents(path: Path, lines: list[str], field: str) -> Iterator[str]:
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{i}: invalid JSON ({e.msg})") from e
        text = _record_text(record, field, f"{path}:{i}")
        if text:
            yield text


def _json_documents(path: Path, field: str) -> Iterator[str]:
    raw = _read_text(path)
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        yield from _jsonl_documents(path, raw.splitlines(), field)  # one object per line, named .json
        return
    records = data if isinstance(data, list) else [data]
    for i, record in enumerate(records):
        text = _record_text(record, field, f"{path} item {i}")
        if text:
            yield text


def _record_text(record: Any, field: str, where: str) -> str:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object with a {field!r} field, got {type(record).__name__}")
    if field not in record:
        raise DataError(f"{where}: no text field {field!r} (fields: {', '.join(map(str, record)) or 'none'})"
                        f"{suggest(field, map(str, record))}")
    value = record[field]
    if value is not None and not isinstance(value, str):
        raise DataError(f"{where}: field {field!r} is {type(value).__name__}, not text")
    return value or ""


def _parquet_documents(path: Path, field: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        if field not in names:
            raise DataError(f"{path}: no text column {field!r} (columns: {', '.join(names)}){suggest(field, names)}")
        for batch in pf.iter_batches(batch_size=1024, columns=[field]):  # row group by row group, never the whole file
            for text in batch.column(0).to_pylist():
                if text:
                    yield text
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"cannot read parquet file {path}: {first_line(e)}") from e


def _hf_documents(source: Source, field: str) -> Iterator[str]:
    name, config, split = source.hf_name, source.hf_config, source.hf_split
    if not Path(name).exists() and not hub_available():
        raise DataError(f"cannot stream {source.text}: the Hugging Face hub is unreachable (offline or HF_HUB_OFFLINE set); "
                        "use a local file/folder or source 'stdlib'")
    import datasets  # slow import: only for hub sources

    try:
        rows = iter(datasets.load_dataset(name, config, split=split, streaming=True))
    except Exception as e:  # datasets raises many types (FileNotFoundError, ValueError, ConnectionError, ...)
        raise DataError(f"cannot load Hugging Face dataset {source.text}: {first_line(e)}") from e
    i = 0
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as e:
            raise DataError(f"reading {source.text} failed at row {i}: {first_line(e)}") from e
        text = _record_text(row, field, f"{source.text} row {i}")
        if text:
            yield text
        i += 1

