"""The node's kernel cache (hybrid_ray/node/kernels.py) on CPU: where it lives, keying by software stack, export/import,
publish/pull between two nodes' folders through storage, concurrent writers, the console line, and the CLI."""

import json
import multiprocessing
import os
import re
import tarfile
from pathlib import Path

import pytest
from test_cli import assert_one_line_error, run

from hybrid_ray import layout
from hybrid_ray.node import kernels

STACK = {"triton": "3.7.1", "fla": "0.6.0", "torch": "2.11.0+cu130", "cuda": "13.0", "arch": "sm90"}
KEY = kernels.stack_key(STACK)


@pytest.fixture
def node(tmp_path, monkeypatch):
    """A node of its own: its cache folder, a fixed software stack, Triton's settings restored afterwards."""
    for name in ("HYBRID_RAY_KERNEL_CACHE", "TRITON_CACHE_DIR", "TRITON_CACHE_AUTOTUNING", "FLA_CACHE_RESULTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HYBRID_RAY_CACHE", str(tmp_path / "node"))
    stack = dict(STACK)
    monkeypatch.setattr(kernels, "probe", lambda: dict(stack))
    return stack


def fake_entries(folder: Path, names=("A", "B", "C"), files=3) -> None:
    """Triton-like entries: kernel files and a group file naming them by absolute path."""
    for name in names:
        entry = folder / f"{name}ENTRY"
        entry.mkdir(parents=True)
        children = {}
        for i in range(files):
            (entry / f"kernel{i}.cubin").write_bytes(f"{name}{i}".encode() * 100)
            children[f"kernel{i}.cubin"] = str(entry / f"kernel{i}.cubin")
        (entry / "__grp__kernel.json").write_text(json.dumps({"child_paths": children}))


def contents(folder: Path) -> dict[str, bytes]:
    return {n: (folder / n).read_bytes() for n in kernels.entry_files(folder) if "__grp__" not in n}


def groups_point_into(folder: Path) -> bool:
    for group in folder.glob("*/__grp__*"):
        for path in json.loads(group.read_text())["child_paths"].values():
            if Path(path).parent != group.parent or not Path(path).exists():
                return False
    return True


def test_activate_points_triton_at_this_stacks_folder_under_the_node_cache(node, tmp_path):
    status = kernels.activate()
    assert status.folder == tmp_path / "node" / "kernels" / KEY and status.folder.is_dir()
    assert KEY == "triton3.7.1-fla0.6.0-torch2.11.0+cu130-cuda13.0-sm90"
    assert os.environ["TRITON_CACHE_DIR"] == str(status.folder)
    assert os.environ["TRITON_CACHE_AUTOTUNING"] == "1" and os.environ["FLA_CACHE_RESULTS"] == "1"
    assert status.entries == 0
    assert status.line() == ("kernels: none cached for triton 3.7.1 / fla 0.6.0 / sm90 yet: compiling and tuning "
                             "FLA's kernels (minutes)")
    fake_entries(status.folder)
    (status.folder / "AENTRY" / "tmp.pid_1_x").mkdir()  # a Triton writer's temporary folder is no entry
    again = kernels.activate()
    assert again.entries == 3
    assert again.line().startswith(f"kernels: 3 cached entries for triton 3.7.1 / fla 0.6.0 / sm90 in {status.folder}")


@pytest.mark.parametrize("change", [{"triton": "3.7.2"}, {"fla": "0.6.0+1a2b3c4d5e-dirty"}, {"arch": "sm100"}])
def test_another_stack_gets_a_fresh_folder(node, change):
    first = kernels.activate()
    fake_entries(first.folder)
    node.update(change)
    other = kernels.activate()
    assert other.folder != first.folder and other.folder.parent == first.folder.parent and other.entries == 0
    assert os.environ["TRITON_CACHE_DIR"] == str(other.folder)


def test_export_import_round_trip_and_another_stacks_archive(node, tmp_path, monkeypatch):
    folder = kernels.activate().folder
    fake_entries(folder)
    before = contents(folder)
    manifest = kernels.export(tmp_path / "k.tar.xz")
    assert manifest["key"] == KEY and manifest["entries"] == 3
    assert kernels.clear() == [KEY] and not folder.exists()
    assert kernels.import_(tmp_path / "k.tar.xz") == (KEY, 3)
    assert contents(folder) == before and groups_point_into(folder)
    assert kernels.import_(tmp_path / "k.tar.xz") == (KEY, 0)  # nothing new

    node["arch"] = "sm100"  # the same archive on a node of another GPU architecture
    with pytest.raises(kernels.KernelCacheError, match=re.escape(f"holds kernels for {KEY}, not this node's stack")):
        kernels.import_(tmp_path / "k.tar.xz")
    assert kernels.clear(all_stacks=True) == [KEY]
    assert kernels.import_(tmp_path / "k.tar.xz", force=True) == (KEY, 3)  # under its own key, never this stack's
    assert kernels.status().entries == 0


def test_a_plain_triton_cache_tarball_imports_with_relocated_groups(node, tmp_path):
    triton_cache = tmp_path / "elsewhere" / "kernel-cache"
    fake_entries(triton_cache, names=("X", "Y"))
    with tarfile.open(tmp_path / "plain.tar.xz", "w:xz") as tar:
        tar.add(triton_cache, arcname="kernel-cache")
    key, added = kernels.import_(tmp_path / "plain.tar.xz")  # no manifest: assumed to be this node's stack
    folder = kernels.status().folder
    assert (key, added) == (KEY, 2) and contents(folder) == contents(triton_cache)
    assert groups_point_into(folder)
    (tmp_path / "junk.tar.xz").write_bytes(b"not an archive")
    with pytest.raises(kernels.KernelCacheError, match="cannot read kernel archive .*: not a tar archive") as e:
        kernels.import_(tmp_path / "junk.tar.xz")
    assert "\n" not in str(e.value) and not str(e.value).endswith(":")  # tarfile's message is a list, one per line


def test_publish_and_pull_between_two_nodes_through_storage(node, tmp_path, monkeypatch):
    store = str(tmp_path / "storage")
    node_a = kernels.activate().folder
    fake_entries(node_a)
    assert kernels.publish(store) == 3 and kernels.publish(store) == 0
    assert (tmp_path / "storage" / layout.KERNEL_STORE / KEY / "AENTRY" / "kernel0.cubin").exists()

    monkeypatch.setenv("HYBRID_RAY_CACHE", str(tmp_path / "node-b"))
    status = kernels.activate(store)  # a worker on node B: pulls before its first step
    assert status.pulled == 3 and status.entries == 3 and "(3 pulled from storage)" in status.line()
    node_b = status.folder
    assert node_b != node_a and contents(node_b) == contents(node_a) and groups_point_into(node_b)
    fake_entries(node_b, names=("D",))  # B compiled a kernel A has not
    assert kernels.publish(store) == 1

    monkeypatch.setenv("HYBRID_RAY_CACHE", str(tmp_path / "node"))
    assert kernels.pull(store) == 1 and contents(node_a) == contents(node_b)


def _pull(store: str, cache: str) -> None:
    os.environ["HYBRID_RAY_CACHE"] = cache
    kernels.pull(store, STACK)


def test_concurrent_pulls_end_with_one_consistent_folder(node, tmp_path):
    store = str(tmp_path / "storage")
    fake_entries(kernels.activate().folder, names=[f"E{i:03d}" for i in range(60)])
    kernels.publish(store)
    cache = str(tmp_path / "node-c")
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_pull, args=(store, cache)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    folder = Path(cache, "kernels", KEY)
    assert contents(folder) == contents(kernels.status().folder) and groups_point_into(folder)
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def test_kernels_cli_list_export_import_clear(node, tmp_path, capsys):
    fake_entries(kernels.activate().folder)
    rc, out, _ = run(capsys, "kernels", "list")
    assert rc == 0 and out.startswith(f"* {KEY}") and " 3 entries" in out
    rc, out, _ = run(capsys, "kernels", "export", str(tmp_path / "k.tar.xz"))
    assert rc == 0 and out.strip() == f"exported 3 entries for {KEY} to {tmp_path / 'k.tar.xz'}"
    rc, out, _ = run(capsys, "kernels", "clear", "--all")
    assert rc == 0 and out.strip() == f"removed {KEY}" and json.loads(run(capsys, "kernels", "list", "--json")[1]) == []
    rc, out, _ = run(capsys, "kernels", "import", str(tmp_path / "k.tar.xz"))
    assert rc == 0 and out.startswith(f"imported 3 new entries for {KEY}")
    node["triton"] = "3.8.0"
    assert_one_line_error(*run(capsys, "kernels", "import", str(tmp_path / "k.tar.xz"))[::2], 1, "--force")
    assert_one_line_error(*run(capsys, "kernels", "export", str(tmp_path / "x.tar.xz"))[::2], 1, "nothing to export")


def test_warmup_without_a_gpu_is_one_error_line(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc, _, err = run(capsys, "warmup", "--variant", "h100_hybrid_sparse")
    assert_one_line_error(rc, err, 1, "warmup needs a CUDA GPU")


def test_bench_warm_reads_warmups_phase_lines_and_splits_the_export(tmp_path):
    from benchmarks.bench_warm import parse_args, split_file, warmup_phases
    from hybrid_ray.train.warmup import Phase

    output = "\n".join(["kernels: none cached ...",
                        Phase("NVIDIA H200 (sm90)", "train step", 212.34, 311).line(),
                        Phase("NVIDIA H200 (sm90)", "decoding", 9.0, 12).line()])
    assert warmup_phases(output) == {"train step": {"seconds": 212.3, "new_entries": 311},
                                     "decoding": {"seconds": 9.0, "new_entries": 12}}
    archive = tmp_path / "kernels.tar.xz"
    archive.write_bytes(bytes(range(256)) * 10)
    assert split_file(archive, size=1000) == ["kernels.tar.xz.000", "kernels.tar.xz.001", "kernels.tar.xz.002"]
    assert b"".join((tmp_path / f"kernels.tar.xz.00{i}").read_bytes() for i in range(3)) == bytes(range(256)) * 10
    args = parse_args(["--out-dir", str(tmp_path)])
    assert args.arms == ["h100_deltanet", "h100_hybrid_sparse", "h100_transformer"] and args.batch_size is None


def test_warmup_of_the_parameter_matched_ratio_grid_compiles_each_kernel_shape_once():
    """`hybrid-ray warmup --grid attention_ratio --match-params` at the H100 base size: the arms that share a kernel
    shape (the same MLP width and layer kinds) are warmed once, the mixed layouts (both layer kinds) first."""
    from hybrid_ray.config.variants import variant_spec
    from hybrid_ray.train.plan import kernel_shape
    from hybrid_ray.train.warmup import distinct_shapes, grid_specs

    base = variant_spec("h100_hybrid_sparse").with_overrides({"model.vocab_size": 50257, "train.batch_size": 16})
    arms = grid_specs(base, ["attention_ratio"], match_params=True)
    shapes = distinct_shapes(arms)
    assert len(arms) == 13 and len(shapes) == len({kernel_shape(s) for s in arms}) <= 13
    widths = {s.model.intermediate_size for s in shapes}
    assert len(widths) == len({s.model.intermediate_size for s in arms})  # every MLP width is compiled
    assert 0 < len(shapes[0].model.attn_layers) < 12  # a hybrid first: it compiles both layer kinds' kernels
    unmatched = distinct_shapes(grid_specs(base, ["attention_ratio"]))  # one MLP width: three kinds of layout
    assert len(unmatched) == 3


def test_warmup_match_params_without_a_grid_is_one_error_line(capsys):
    rc, _, err = run(capsys, "warmup", "--match-params")
    assert_one_line_error(rc, err, 2, "--match-params goes with --grid")
