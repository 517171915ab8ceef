"""One kernel cache per node and software stack: FLA's compiled Triton kernels and their autotuning results.

    status = kernels.activate()   # in every process, before the first Triton compile
    print(status.line())

`$HYBRID_RAY_CACHE/kernels/<stack key>/` (or `$HYBRID_RAY_KERNEL_CACHE/<stack key>/`) holds Triton's cache entries
(a folder per compiled kernel or autotuning result). The key names Triton, FLA (with a clone's commit), torch, CUDA
and the GPU architecture, so another stack never reads a stale entry. Triton writes its entries itself, each file
atomically; what this module copies in (import, pull) is written under a temporary name and renamed into place, under
a lock per key. Across a cluster, entries travel through `<storage>/.kernels/<key>/`: `publish` copies what storage
lacks, `pull` what this node lacks; Triton only ever reads the node-local copy (shared file systems race).
"""

from __future__ import annotations

import datetime
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybrid_ray import storage
from hybrid_ray.errors import HybridRayError, first_line
from hybrid_ray.layout import kernel_store
from hybrid_ray.node.cache import cache_root, locked

MANIFEST = "hybrid-ray-kernels.json"  # in an exported archive, beside its cache/ folder
ARCHIVE_DIR = "cache"  # the top folder of an archive, as in a tarball of ~/.triton/cache
_GROUP = "__grp__"  # Triton's index of one compiled kernel's files, by absolute path: rewritten wherever they land
_STACK = ("triton", "fla", "torch", "cuda", "arch")


class KernelCacheError(HybridRayError):
    """An archive that is not a kernel cache, or one built for another software stack."""


def probe() -> dict[str, str]:
    """This process's stack: what a compiled kernel depends on (versions, and the current GPU's architecture)."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from hybrid_ray.node.fla_source import fla_source

    try:
        triton = version("triton")
    except PackageNotFoundError:
        triton = "none"
    fla = fla_source()
    fla_id = fla.get("version") or "none"
    if fla.get("commit"):
        fla_id += f"+{fla['commit'][:10]}" + ("-dirty" if fla.get("dirty") else "")
    arch = "sm%d%d" % torch.cuda.get_device_capability() if torch.cuda.is_available() else "cpu"
    return {"triton": triton, "fla": fla_id, "torch": torch.__version__, "cuda": torch.version.cuda or "none",
            "arch": arch}


def stack_key(stack: dict[str, str]) -> str:
    """A folder name for a stack, e.g. triton3.7.1-fla0.6.0-torch2.11.0_cu130-cuda13.0-sm90."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", "-".join(f"{k if k != 'arch' else ''}{stack[k]}" for k in _STACK))


def root() -> Path:
    """Every stack's kernel cache on this node: $HYBRID_RAY_KERNEL_CACHE, else the node cache's kernels/."""
    return Path(os.environ.get("HYBRID_RAY_KERNEL_CACHE") or cache_root() / "kernels").expanduser()


@dataclass
class CacheStatus:
    key: str
    folder: Path
    entries: int
    stack: dict[str, str] = field(default_factory=dict)
    pulled: int = 0  # entries copied from the cluster's storage by this process

    def line(self) -> str:
        """What the console says before a first step."""
        what = " / ".join(f"{k} {self.stack[k]}" for k in ("triton", "fla") if k in self.stack)
        what += f" / {self.stack.get('arch', self.key)}"
        if not self.entries:
            return f"kernels: none cached for {what} yet: compiling and tuning FLA's kernels (minutes)"
        pulled = f" ({self.pulled} pulled from storage)" if self.pulled else ""
        return (f"kernels: {self.entries} cached entries{pulled} for {what} in {self.folder}; shapes not among them "
                "still compile")


def entry_files(folder: Path) -> dict[str, int]:
    """Sizes of the files of `folder`'s cache entries, by 'entry/file' (temporary files of writers left out)."""
    found: dict[str, int] = {}
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.is_dir() and not entry.name.startswith((".", "tmp.")):
                for f in entry.iterdir():
                    if f.is_file():
                        found[f"{entry.name}/{f.name}"] = f.stat().st_size
    return found


def count_entries(folder: Path) -> int:
    return len({name.split("/")[0] for name in entry_files(folder)})


def status(stack: dict[str, str] | None = None) -> CacheStatus:
    stack = stack or probe()
    folder = root() / stack_key(stack)
    return CacheStatus(stack_key(stack), folder, count_entries(folder), stack)


def activate(storage_path: str | None = None) -> CacheStatus:
    """Point Triton (and FLA's autotuner) at this node's cache for this stack, after copying in what the cluster's
    storage has and this node lacks (when `storage_path` is given). Call before the first Triton compile."""
    st = status()
    st.folder.mkdir(parents=True, exist_ok=True)
    os.environ["TRITON_CACHE_DIR"] = str(st.folder)
    os.environ["TRITON_CACHE_AUTOTUNING"] = "1"  # keep autotuning results beside the kernels: the slow part
    os.environ.setdefault("FLA_CACHE_RESULTS", "1")  # FLA autotuners ask Triton to cache (its default; read at import)
    # torch.compile's (--compile) caches beside, in a dot folder that entry counts and exports skip
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(st.folder / ".inductor"))
    if storage_path:
        st.pulled = pull(storage_path, st.stack)
        st.entries = count_entries(st.folder)
    _active[:] = [st]
    return st


_active: list[CacheStatus] = []  # what this process's last activate() pointed Triton at


def ensure_active() -> CacheStatus:
    """activate() once per process: what building an FLA model needs before its first compile. Later calls return
    that status without probing the stack or counting the cache again, unless the cache's place has changed since
    (another $HYBRID_RAY_KERNEL_CACHE, or TRITON_CACHE_DIR pointed elsewhere)."""
    if _active:
        st = _active[0]
        if os.environ.get("TRITON_CACHE_DIR") == str(st.folder) and root() / st.key == st.folder:
            return st
    return activate()


def _relocate(data: bytes, entry: Path) -> bytes:
    """A group file whose child paths point into `entry` (Triton ignores a group whose files it cannot find)."""
    try:
        group = json.loads(data)
        group["child_paths"] = {c: str(entry / Path(p).name) for c, p in group["child_paths"].items()}
        return json.dumps(group).encode()
    except (ValueError, KeyError, AttributeError, TypeError):
        return data


def _merge(folder: Path, names: Iterable[str], read: Callable[[str], bytes]) -> int:
    """Copy the entry files `names` ('entry/file') that `folder` lacks, each read by `read(name)`; returns how many
    entries were added or completed. A new entry is assembled in a temporary folder and renamed into place; a missing
    file of an existing entry goes through a temporary name, as Triton writes them; group files go last."""
    wanted: dict[str, list[str]] = {}
    for name in names:
        entry, _, file = name.partition("/")
        if file and "/" not in file and not entry.startswith((".", "tmp.")):
            wanted.setdefault(entry, []).append(file)
    folder.mkdir(parents=True, exist_ok=True)
    changed = 0
    with locked(folder.parent / f".{folder.name}.lock"):
        for stale in folder.glob(".tmp-*"):  # left by a killed process; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        for entry, files in sorted(wanted.items()):
            target = folder / entry
            missing = sorted((f for f in files if not (target / f).exists()), key=lambda f: (f.startswith(_GROUP), f))
            if not missing:
                continue
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{entry[:16]}-", dir=folder))
            try:
                for f in missing:
                    data = read(f"{entry}/{f}")
                    (tmp / f).write_bytes(_relocate(data, target) if f.startswith(_GROUP) else data)
                try:
                    os.rename(tmp, target)  # fails when the entry exists (Triton may have made it meanwhile)
                except OSError:
                    target.mkdir(exist_ok=True)
                    for f in missing:
                        os.replace(tmp / f, target / f)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            changed += 1
    return changed


def publish(storage_path: str, stack: dict[str, str] | None = None) -> int:
    """Copy the entry files this node has and `<storage_path>/.kernels/<key>/` lacks; returns the entries touched."""
    st = status(stack)
    store = kernel_store(storage_path, st.key)
    missing = sorted(set(entry_files(st.folder)) - set(storage.tree_sizes(store)), key=lambda n: _GROUP in n)
    for name in missing:
        storage.write_bytes(storage.join(store, *name.split("/")), (st.folder / name).read_bytes())
    return len({name.split("/")[0] for name in missing})


def pull(storage_path: str, stack: dict[str, str] | None = None) -> int:
    """Copy the entry files `<storage_path>/.kernels/<key>/` has and this node lacks; returns the entries touched."""
    st = status(stack)
    store = kernel_store(storage_path, st.key)
    missing = set(storage.tree_sizes(store)) - set(entry_files(st.folder))
    return _merge(st.folder, missing, lambda name: storage.read_bytes(storage.join(store, *name.split("/")))) \
        if missing else 0


def export(file: str | Path, stack: dict[str, str] | None = None) -> dict[str, Any]:
    """Write this stack's cache to a .tar.xz (`cache/` plus a manifest naming the key); returns the manifest."""
    st = status(stack)
    names = sorted(entry_files(st.folder))
    if not names:
        raise KernelCacheError(f"no kernels cached for {st.key} in {st.folder}: nothing to export")
    manifest = {"key": st.key, "stack": st.stack, "entries": st.entries,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.tmp-{os.getpid()}")
    with tarfile.open(tmp, "w:xz", preset=1) as tar:  # ~10x faster than xz's default, nearly as small on kernels
        data = json.dumps(manifest, indent=1).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for name in names:
            tar.add(st.folder / name, arcname=f"{ARCHIVE_DIR}/{name}")
    tmp.replace(file)
    return manifest


def import_(file: str | Path, *, key: str | None = None, force: bool = False) -> tuple[str, int]:
    """Install an archive's entries under its stack's key (a plain Triton cache tarball has none: `key`, else this
    node's); another stack's archive is refused unless `force`. Returns (key, entries added or completed)."""
    here = stack_key(probe())
    root().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".import-", dir=root()) as tmp:
        try:  # unpacked whole first: members of a compressed archive read out of order decompress it again and again
            with tarfile.open(file, "r:*") as tar:
                safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.10.12
                tar.extractall(tmp, members=[m for m in tar.getmembers() if m.isfile()], **safe)
        except tarfile.ReadError as e:  # its message lists every compression it tried, one per line
            raise KernelCacheError(f"cannot read kernel archive {file}: not a tar archive (plain, .gz, .bz2 or .xz), "
                                   "or a damaged one") from e
        except (tarfile.TarError, OSError, EOFError) as e:
            raise KernelCacheError(f"cannot read kernel archive {file}: {first_line(e)}") from e
        manifest = json.loads(Path(tmp, MANIFEST).read_text()) if Path(tmp, MANIFEST).is_file() else {}
        key = key or manifest.get("key") or here
        if key != here and not force:
            raise KernelCacheError(f"{file} holds kernels for {key}, not this node's stack {here}: Triton here would "
                                   "never read them (--force installs them under their own key anyway)")
        files = {"/".join(p.relative_to(tmp).parts[-2:]): p for p in Path(tmp).rglob("*")
                 if p.is_file() and p.name != MANIFEST and len(p.relative_to(tmp).parts) > 1}
        if not files:
            raise KernelCacheError(f"{file} holds no Triton cache entries")
        return key, _merge(root() / key, files, lambda name: files[name].read_bytes())


def list_caches() -> list[dict[str, Any]]:
    """Per stack key on this node: entries, bytes, and when the newest file was written."""
    rows = []
    for folder in sorted(p for p in root().glob("*") if p.is_dir() and not p.name.startswith(".")):
        files = entry_files(folder)
        newest = max(((folder / n).stat().st_mtime for n in files), default=None)
        rows.append({"key": folder.name, "folder": str(folder), "entries": count_entries(folder),
                     "bytes": sum(files.values()), "newest": newest and datetime.datetime.fromtimestamp(
                         newest, datetime.timezone.utc).isoformat(timespec="seconds")})
    return rows


def clear(all_stacks: bool = False) -> list[str]:
    """Remove this stack's cache (or every stack's); returns the keys removed."""
    keys = [r["key"] for r in list_caches()] if all_stacks else [stack_key(probe())]
    removed = []
    for key in keys:
        folder = root() / key
        if folder.exists():
            with locked(root() / f".{key}.lock"):
                shutil.rmtree(folder, ignore_errors=True)
            removed.append(key)
    return removed
