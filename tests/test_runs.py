"""Run folders without Ray: relaunching a run that never checkpointed, `hybrid-ray runs list/rm`, strict JSON."""

import json

import pytest

from hybrid_ray.cli import main
from hybrid_ray.config.variants import variant_spec
from hybrid_ray.errors import HybridRayError, SpecError
from hybrid_ray.layout import RunLayout
from hybrid_ray.records import folders
from test_checkpoint import write


def spec(tmp_path, **overrides):
    return variant_spec("h100_hybrid_sparse", "tiny").with_overrides({"storage_path": str(tmp_path), **overrides})


def test_a_run_without_checkpoints_takes_new_settings_and_one_with_them_does_not(tmp_path):
    run_dir = str(tmp_path / "h100_hybrid_sparse-tiny")
    assert folders.claim(RunLayout(run_dir), spec(tmp_path)) is False
    assert folders.claim(RunLayout(run_dir), spec(tmp_path, **{"train.steps": 300})) is False  # it failed before its first checkpoint
    assert "steps: 300" in (tmp_path / "h100_hybrid_sparse-tiny" / "spec.yaml").read_text()
    write(tmp_path / "h100_hybrid_sparse-tiny" / "checkpoint_00000010")
    with pytest.raises(SpecError, match="already exists with train.steps=300 \\(now 200\\)") as refused:
        folders.claim(RunLayout(run_dir), spec(tmp_path))
    assert f"--config {run_dir}/spec.yaml repeats its spec" in str(refused.value)
    assert folders.claim(RunLayout(run_dir), spec(tmp_path, **{"train.steps": 300, "scale.num_workers": 2})) is True  # hardware may change


def test_runs_list_and_rm(tmp_path, capsys):
    folders.claim(RunLayout(str(tmp_path / "fresh")), spec(tmp_path, name="fresh"))
    folders.claim(RunLayout(str(tmp_path / "going")), spec(tmp_path, name="going"))
    write(tmp_path / "going" / "checkpoint_00000010")
    folders.claim(RunLayout(str(tmp_path / "done")), spec(tmp_path, name="done"))
    folders.write_results(RunLayout(str(tmp_path / "done")), {"status": "finished", "step": 200, "total_steps": 200,
                                                "spec": {"variant": "h100_hybrid_sparse"},
                                                "best": {"step": 150, "val_loss": 2.25}})
    (tmp_path / "not-a-run").mkdir()
    assert main(["runs", "list", "--storage-path", str(tmp_path), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"fresh", "going", "done"}
    assert (rows["fresh"]["status"], rows["fresh"]["step"]) == ("not started", None)
    assert (rows["going"]["status"], rows["going"]["step"], rows["going"]["total_steps"]) == ("running or interrupted", 10, 200)
    assert (rows["done"]["status"], rows["done"]["best_val_loss"]) == ("finished", 2.25)
    assert main(["runs", "list", "--storage-path", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "done" in table and "2.2500" in table and "200/200" in table
    assert main(["runs", "rm", "going", "--storage-path", str(tmp_path), "--yes"]) == 0
    assert not (tmp_path / "going").exists() and (tmp_path / "done").exists()
    assert main(["runs", "rm", "gone", "--storage-path", str(tmp_path), "--yes"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no run 'gone'") and "did you mean 'done'" in err[0]
    # without --yes too: a name that is no run is refused before anything is asked
    assert main(["runs", "rm", "gone", "--storage-path", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "[y/N]" not in captured.out and captured.err.startswith("error: no run 'gone'")


def test_results_are_strict_json(tmp_path):
    folders.write_results(RunLayout(str(tmp_path)), {"final": {"val_loss": float("nan")}, "history": [{"loss": float("inf")}]})
    text = (tmp_path / "results.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"final": {"val_loss": None}, "history": [{"loss": None}]}


@pytest.mark.parametrize("content", [b"", b"- just\n- a list\n", bytes(range(128, 256))])
def test_a_damaged_spec_or_results_file_is_one_line(tmp_path, capsys, content):
    run_dir = tmp_path / "broken"
    run_dir.mkdir()
    (run_dir / "spec.yaml").write_bytes(content)
    assert main(["runs", "list", "--storage-path", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "spec.yaml is damaged" in err[0], err
    (run_dir / "spec.yaml").write_text("name: broken\n")
    (run_dir / "results.json").write_bytes(content or b"[]")
    for args in (["runs", "list", "--storage-path", str(tmp_path)], ["compare", str(run_dir), "--out", str(tmp_path / "c")]):
        assert main(args) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and "results.json" in err[0], err
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "sweep.json").write_bytes(content or b"[]")
    assert main(["compare", str(tmp_path / "sweep"), "--out", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "sweep.json" in err[0], err
    assert not (tmp_path / "c").exists()


def test_damaged_files_a_launch_writes_again_are_kept_aside(tmp_path):
    run_dir = tmp_path / "run"
    folders.claim(RunLayout(str(run_dir)), spec(tmp_path, name="run"))
    assert folders.set_aside_damaged(RunLayout(str(run_dir))) == []  # none there yet
    folders.write_results(RunLayout(str(run_dir)), {"status": "stopped", "step": 10})
    folders.count_launch(RunLayout(str(run_dir)))
    assert folders.set_aside_damaged(RunLayout(str(run_dir))) == []  # readable: left where they are
    (run_dir / "results.json").write_bytes(b'{"status": "fin')  # cut short by a full disk
    (run_dir / "launches.json").write_bytes(b"[]")
    (run_dir / "results.json.damaged").write_bytes(b"an earlier one")
    with pytest.warns(UserWarning) as warned:
        moved = folders.set_aside_damaged(RunLayout(str(run_dir)))
    assert moved == [str(run_dir / "results.json.damaged-1"), str(run_dir / "launches.json.damaged")]
    assert "wall time starts over" in str(warned[0].message) and "launches starts over" in str(warned[1].message)
    assert (run_dir / "results.json.damaged-1").read_bytes() == b'{"status": "fin'
    assert (run_dir / "results.json.damaged").read_bytes() == b"an earlier one"
    assert folders.read_results(RunLayout(str(run_dir))) is None and folders.launch_count(RunLayout(str(run_dir))) == 0


def test_a_damaged_spec_on_relaunch_says_how_to_resume(tmp_path):
    run_dir = tmp_path / "h100_hybrid_sparse-tiny"
    folders.claim(RunLayout(str(run_dir)), spec(tmp_path))
    write(run_dir / "checkpoint_00000010")
    folders.write_results(RunLayout(str(run_dir)), {"status": "stopped", "step": 10, "spec": spec(tmp_path).to_dict()})
    (run_dir / "spec.yaml").write_bytes(bytes(range(128, 256)))
    with pytest.raises(HybridRayError, match="spec.yaml is damaged") as refused:
        folders.claim(RunLayout(str(run_dir)), spec(tmp_path))
    assert f"move that file aside and relaunch with --config {run_dir / 'results.json'}" in str(refused.value)
    (run_dir / "spec.yaml").rename(run_dir / "spec.yaml.damaged")
    from hybrid_ray.spec import RunSpec

    relaunched = RunSpec.from_dict(folders.read_results(RunLayout(str(run_dir)))["spec"])
    assert folders.claim(RunLayout(str(run_dir)), relaunched) is True  # resumes from its checkpoint, its spec written again
    assert folders.read_spec(RunLayout(str(run_dir))) == relaunched.to_dict()


def test_a_damaged_run_is_listed_beside_the_others_and_can_be_removed(tmp_path, capsys):
    """One damaged run no longer hides every other run from `runs list` or `compare`, nor blocks `runs rm` (of itself
    too)."""
    folders.claim(RunLayout(str(tmp_path / "done")), spec(tmp_path, name="done"))
    folders.write_results(RunLayout(str(tmp_path / "done")), {"status": "finished", "step": 200, "total_steps": 200,
                                                "best": {"step": 200, "val_loss": 2.25}})
    for name, file in (("cut", "results.json"), ("garbled", "spec.yaml")):
        folders.claim(RunLayout(str(tmp_path / name)), spec(tmp_path, name=name))
        (tmp_path / name / file).write_bytes(b"{" if file == "results.json" else bytes(range(128, 256)))
    assert main(["runs", "list", "--storage-path", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    table = {line.split()[0]: line.split()[2] for line in out.splitlines()[1:]}
    assert table == {"cut": "damaged", "done": "finished", "garbled": "damaged"}
    err = err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)
    assert f"{tmp_path / 'cut' / 'results.json'} is not valid JSON" in err[0] and "spec.yaml is damaged" in err[1]
    assert main(["runs", "list", "--storage-path", str(tmp_path), "--json"]) == 1
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["done"]["problem"] is None and "not valid JSON" in rows["cut"]["problem"]
    with pytest.warns(UserWarning, match="cut/results.json is not valid JSON.*; left out of the comparison"):
        assert main(["compare", str(tmp_path), "--out", str(tmp_path / "cmp")]) == 0  # the rest is compared
    assert "done" in capsys.readouterr().out
    for name in ("cut", "garbled"):
        assert main(["runs", "rm", name, "--storage-path", str(tmp_path), "--yes"]) == 0
        assert not (tmp_path / name).exists()
    assert main(["runs", "list", "--storage-path", str(tmp_path)]) == 0
    assert (tmp_path / "done" / "results.json").exists()


def test_the_damaged_run_hint_removes_that_run_and_no_other(tmp_path, monkeypatch, capsys):
    """Two runs named longjob, one under the default storage path: the hint for the damaged one names its path."""
    import shlex

    from hybrid_ray.cli import build_spec

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    default, other = tmp_path / "home" / "hybrid-ray-runs", tmp_path / "other"
    for root in (default, other):
        folders.claim(RunLayout(str(root / "longjob")), build_spec(None, None, None, name="longjob", storage_path=str(root),
                                                             vocab_size="320"))  # what the byte tokenizer resolves
        write(root / "longjob" / "checkpoint_00000010")
    weights = other / "longjob" / "checkpoint_00000010" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert main(["train", "--name", "longjob", "--storage-path", str(other)]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]  # after the progress
    assert len(err) == 1 and "every checkpoint of run longjob is damaged" in err[0], err
    hint = err[0].split("`")[1]
    assert hint == f"hybrid-ray runs rm longjob --storage-path {other}"
    assert main([*shlex.split(hint)[1:], "--yes"]) == 0
    assert not (other / "longjob").exists() and (default / "longjob" / "checkpoint_00000010").exists()
    assert folders.rm_command(str(default), "longjob") == folders.rm_command("~/hybrid-ray-runs/", "longjob") == \
        "hybrid-ray runs rm longjob"


def test_extending_a_run_that_does_not_exist_is_refused_and_writes_nothing(tmp_path, monkeypatch, capsys):
    """Issue 36: `hybrid-ray train --extend-steps 100 --name b18` (a new name) trained 300 steps whose learning rate
    only rose, and exited 0. Under the user's default storage path: one line, non-zero, nothing written."""
    monkeypatch.setenv("HOME", str(tmp_path))
    default = tmp_path / "hybrid-ray-runs"
    assert main(["train", "--extend-steps", "100", "--name", "b18"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --extend-steps lengthens a run that has trained"), err
    assert f"there is no run b18 under {default}" in err[0] and "nothing to extend" in err[0]
    assert not default.exists()
    # a run that failed before its first checkpoint has nothing to extend either; its spec.yaml stays as it was
    folders.claim(RunLayout(str(default / "b18")), spec(default, name="b18"))
    before = (default / "b18" / "spec.yaml").read_bytes()
    assert main(["train", "--extend-steps", "100", "--name", "b18"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"run b18 under {default} has no checkpoint yet" in err[0], err
    assert sorted(p.name for p in (default / "b18").iterdir()) == ["spec.yaml"]
    assert (default / "b18" / "spec.yaml").read_bytes() == before


def test_compare_writes_beside_the_compared_runs_not_into_the_current_folder(tmp_path, monkeypatch, capsys):
    """Issue 36: `compare` wrote comparison/ into the current folder (a git clone got an untracked folder). The
    README's command, under the user's default storage path, run from a clone."""
    from hybrid_ray.records import report

    monkeypatch.setenv("HOME", str(tmp_path))
    clone = tmp_path / "clone"
    clone.mkdir()
    monkeypatch.chdir(clone)
    root = tmp_path / "hybrid-ray-runs"
    finished = {"status": "finished", "step": 200, "total_steps": 200, "spec": {"variant": "h100_hybrid_sparse"},
                "best": {"step": 200, "val_loss": 2.25}}
    folders.claim(RunLayout(str(root / "run-B")), spec(root, name="run-B"))
    folders.write_results(RunLayout(str(root / "run-B")), {**finished, "name": "run-B"})
    trial = root / "sweep-A" / "trials" / "attn17-s0"
    folders.claim(RunLayout(str(trial)), spec(root, name="attn17-s0"))
    folders.write_results(RunLayout(str(trial)), {**finished, "name": "attn17-s0"})
    (root / "sweep-A" / "sweep.json").write_text(json.dumps({"trials": [report._run_row(RunLayout(str(trial)), finished)]}))

    def compare(*paths, out=None):
        assert main(["compare", *map(str, paths), *(["--out", out] if out else [])]) == 0
        printed = capsys.readouterr().out.splitlines()[-1]
        assert printed.startswith("results: "), printed
        return printed.removeprefix("results: ").split(" (figure")[0]

    assert compare("~/hybrid-ray-runs/sweep-A", "~/hybrid-ray-runs/run-B") == str(root / "comparison")
    assert (root / "comparison" / "comparison.json").exists() and list(clone.iterdir()) == []
    assert compare(root / "sweep-A") == str(root / "sweep-A" / "comparison")
    assert compare(root / "sweep-A" / "trials") == compare(trial) == str(root / "sweep-A" / "comparison")
    assert compare(root) == compare(root) == str(root / "comparison")  # its comparison/ is not taken for a run
    assert compare(root / "run-B") == str(root / "comparison")
    assert json.loads((root / "comparison" / "comparison.json").read_text())["trials"][0]["name"] == "run-B"
    assert main(["runs", "list", "--storage-path", str(root), "--json"]) == 0
    assert {r["name"] for r in json.loads(capsys.readouterr().out)} == {"run-B", "sweep-A/attn17-s0"}
    assert list(clone.iterdir()) == []
    assert compare(root / "run-B", out="here") == str(clone / "here")  # --out still says where


def test_runs_list_names_a_ratio_sweep_trial_by_its_attention_layout(tmp_path, capsys):
    """Issue 36: the trials of a sweep over attention shares (no named variant) were listed with `-` as the variant."""
    from hybrid_ray.cli import build_spec
    from hybrid_ray.config.grid import expand, parse_grid

    base = build_spec(None, None, None, storage_path=str(tmp_path))  # the default tiny hybrid, 6 layers
    arms = expand(base, parse_grid(["attention_ratio=0,0.17,0.5,1"]))
    trials = tmp_path / "sweep-shares" / "trials"
    for arm in arms:
        folders.claim(RunLayout(str(trials / f"{arm.id}-s0")), arm.spec.with_overrides({"name": f"{arm.id}-s0"}))
    folders.write_results(RunLayout(str(trials / "attn50-s0")), {"status": "finished", "step": 200, "total_steps": 200,
                                                   "spec": arms[2].spec.to_dict(), "best": {"step": 200, "val_loss": 2.5}})
    folders.claim(RunLayout(str(tmp_path / "named")), spec(tmp_path, name="named"))
    assert main(["runs", "list", "--storage-path", str(tmp_path)]) == 0
    shown = {line.split()[0]: line[32:58].strip() for line in capsys.readouterr().out.splitlines()[1:]}
    assert shown == {"named": "h100_hybrid_sparse", "sweep-shares/attn0-s0": "attn0%",
                     "sweep-shares/attn17-s0": "attn17% [5]", "sweep-shares/attn50-s0": "attn50% [1,3,5]",
                     "sweep-shares/attn100-s0": "attn100%"}, shown
    assert main(["runs", "list", "--storage-path", str(tmp_path), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["sweep-shares/attn17-s0"]["variant"] is None and rows["sweep-shares/attn17-s0"]["attention"] == "attn17% [5]"
    assert folders.layout_label({"attn_layers": [1, 2, 3, 4, 5, 6, 7, 8, 10, 11], "num_layers": 12}) == "attn83% [1-8,10,11]"
