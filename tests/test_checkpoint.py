"""Checkpoint folders without Ray: the trainer state, safe loading, verification, failed writes, naming."""

import json
import os
import pickle
import random

import numpy as np
import pytest
import torch

from hybrid_ray.config.variants import variant_spec
from hybrid_ray import layout
from hybrid_ray.layout import RunLayout
from hybrid_ray.errors import CheckpointError
from hybrid_ray.model import build_model
from hybrid_ray.records import folders
from hybrid_ray.storage import crc32
from hybrid_ray.train import checkpoint as ckpt
from hybrid_ray.train.checkpoint import TrainerState

SPEC = variant_spec("h100_hybrid_sparse", "tiny").with_overrides({
    "model.vocab_size": 64, "model.num_layers": 2, "model.attn_layers": [1]})


def write(folder, step=10, world_size=1):
    model = build_model(SPEC.model, "torch")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(input_ids=torch.randint(0, 64, (1, 8)), labels=torch.randint(0, 64, (1, 8))).loss.backward()
    optimizer.step()
    state = TrainerState(step=step, total_steps=20, tokens_seen=step * 8, history=[{"step": step, "loss": 1.5}],
                         loader={"step": step})
    for rank in range(world_size):
        ckpt.save(folder, rank=rank, world_size=world_size, state=state, spec=SPEC,
                  model_state=model.state_dict() if rank == 0 else None,
                  optimizer_state=optimizer.state_dict() if rank == 0 else None)
    return model, optimizer, state


def test_a_checkpoint_round_trips_states_and_rng(tmp_path):
    torch.manual_seed(3)
    np.random.seed(4)
    random.seed(5)
    model, optimizer, state = write(tmp_path)
    expected = (torch.rand(3), np.random.rand(3), random.random())  # draws right after the save
    restored = ckpt.load(tmp_path, rank=0)
    assert restored.state == state and json.loads((tmp_path / "trainer_state.json").read_text())["format"] == 2
    assert all(torch.equal(restored.model_state[k], v) for k, v in model.state_dict().items())
    assert restored.optimizer_state["state"][0]["exp_avg"].shape == next(model.parameters()).shape
    ckpt.set_rng_state(restored.rng)
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_trainer_state_ignores_keys_it_does_not_know():
    state = TrainerState(step=3, history=[{"step": 3}])
    assert TrainerState.from_dict({**state.to_dict(), "spec": {}, "format": 2}) == state


@pytest.mark.parametrize("planted", ["optimizer.pt", "rng_rank0.pt"])
def test_a_pickle_that_runs_code_is_refused_by_name_and_never_runs(tmp_path, planted):
    write(tmp_path)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / planted).write_bytes(pickle.dumps({"state": Exploit()}))
    manifest = json.loads((tmp_path / "manifest_rank0.json").read_text())
    manifest["files"][planted] = {"bytes": (tmp_path / planted).stat().st_size, "crc32": crc32(tmp_path / planted)}
    (tmp_path / "manifest_rank0.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=f"refusing to load {tmp_path / planted}"):
        ckpt.load(tmp_path, rank=0)
    with pytest.raises(CheckpointError, match=f"refusing to load {tmp_path / planted}"):
        ckpt.check_pickles(str(tmp_path))  # the driver's check before any worker starts (a raw pickle here)
    assert not marker.exists()


def test_the_drivers_pickle_check_passes_what_a_run_writes(tmp_path):
    write(tmp_path, world_size=2)
    ckpt.check_pickles(str(tmp_path))  # no error: tensors, numbers and numpy's RNG arrays only


def test_format_1_rng_files_with_numpy_arrays_still_load(tmp_path):
    write(tmp_path)
    legacy = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    torch.save(legacy, tmp_path / "rng_rank0.pt")
    manifest = json.loads((tmp_path / "manifest_rank0.json").read_text())
    manifest["files"]["rng_rank0.pt"] = {"bytes": (tmp_path / "rng_rank0.pt").stat().st_size,
                                         "crc32": crc32(tmp_path / "rng_rank0.pt")}
    (tmp_path / "manifest_rank0.json").write_text(json.dumps(manifest["files"]))  # format 1: a flat manifest
    restored = ckpt.load(tmp_path, rank=0)
    ckpt.set_rng_state(restored.rng)
    assert np.random.get_state()[2] == legacy["numpy"][2]


def test_a_write_that_fails_part_way_leaves_nothing_resume_picks_up(tmp_path, monkeypatch):
    run = tmp_path / "run"
    write(run / "checkpoint_00000010")

    def full_disk(obj, path, *a, **k):
        if str(path).endswith("optimizer.pt"):
            raise OSError(28, "No space left on device")
        return real_save(obj, path, *a, **k)

    real_save = torch.save
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="cannot write the step-10 checkpoint .* No space left on device"):
        write(run / "checkpoint_00000020")
    monkeypatch.undo()
    assert not (run / "checkpoint_00000020" / "manifest_rank0.json").exists()
    with pytest.warns(UserWarning, match="checkpoint_00000020 is incomplete: manifest_rank0.json is missing"):
        assert ckpt.CheckpointManager(layout.RunLayout(str(run))).latest() == str(run / "checkpoint_00000010")


def test_verify_wants_every_rank_and_matching_files(tmp_path):
    write(tmp_path, world_size=2)
    ckpt.verify(str(tmp_path))
    (tmp_path / "manifest_rank1.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete: manifest_rank1.json is missing"):
        ckpt.verify(str(tmp_path))
    write(tmp_path, world_size=2)
    (tmp_path / "optimizer.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="corrupt: optimizer.pt does not match"):
        ckpt.verify(str(tmp_path))
    (tmp_path / "manifest_rank0.json").write_text("")
    with pytest.raises(CheckpointError, match="manifest_rank0.json is unreadable"):
        ckpt.verify(str(tmp_path))


def test_folder_names_never_reuse_an_existing_folder():
    assert layout.checkpoint_name(20) == "checkpoint_00000020"
    taken = {"checkpoint_00000020", "checkpoint_00000020-1"}
    assert layout.checkpoint_name(20, taken) == "checkpoint_00000020-2"
    assert layout.step_of("checkpoint_00000020-2") == 20 and layout.step_of("checkpoint_manager_snapshot.json") is None


def test_latest_orders_by_step_then_suffix(tmp_path):
    for name in ("checkpoint_00000010", "checkpoint_00000020", "checkpoint_00000020-1"):
        write(tmp_path / name)
    (tmp_path / "checkpoint_manager_snapshot.json").write_text("{}")  # Ray's own file: not a checkpoint
    assert folders.list_checkpoints(RunLayout(str(tmp_path))) == ["checkpoint_00000010", "checkpoint_00000020", "checkpoint_00000020-1"]
    assert ckpt.CheckpointManager(layout.RunLayout(str(tmp_path))).latest().endswith("checkpoint_00000020-1")


def write_ray_record(run, steps):
    """Checkpoints at `steps` and Ray Train's record of them, as Ray 2.60 writes it after one report per step."""
    import ray

    def result(step):
        return {"version": 0, "checkpoint_dir_name": layout.checkpoint_name(step), "metrics": {"step": step}}

    for step in steps:
        write(run / layout.checkpoint_name(step), step=step)
    (run / layout.RAY_RECORD).write_text(json.dumps({
        "ray_version": ray.__version__, "checkpoint_results": [result(s) for s in steps],
        "checkpoint_report_indices": list(range(len(steps))), "latest_checkpoint_result": result(steps[-1]),
        "pending_training_results": [], "pending_validation_specs": [], "current_report_index": len(steps),
        "validated_checkpoint_dir_names": [], "timed_out_validation_checkpoint_dir_names": [],
        "failed_validation_checkpoint_dir_names": []}))


def test_the_run_keeps_its_newest_checkpoints_and_ray_deletes_none(tmp_path):
    """While a run trains, its CheckpointManager keeps the newest `train.keep` of the checkpoints Ray's record listed
    at launch and those written since (a folder Ray never recorded, as after a damaged record, is left alone); Ray's
    own manager keeps every checkpoint."""
    run = tmp_path / "run"
    for step in (10, 20, 30, 40, 50):
        (run / layout.checkpoint_name(step)).mkdir(parents=True)
    manager = ckpt.CheckpointManager(layout.RunLayout(str(run)), keep=2)
    known = [layout.checkpoint_name(s) for s in (10, 20, 30)]
    gone = manager.keep_newest(layout.checkpoint_name(50), counted=known[:2], known=known)
    assert gone == [layout.checkpoint_name(10), layout.checkpoint_name(20)]
    assert folders.list_checkpoints(RunLayout(str(run))) == [layout.checkpoint_name(s) for s in (30, 40, 50)]
    assert manager.keep_newest(layout.checkpoint_name(50), counted=known[:2], known=known) == []
    config, _ = manager.for_ray(ckpt.Resume(None, [], []))
    assert config.num_to_keep is None


def at_launch(run):
    """(the newest good checkpoint, every checkpoint folder) that a launch of the run finds, after it mended Ray's
    record for a launch that trains."""
    manager = ckpt.CheckpointManager(layout.RunLayout(str(run)), keep=SPEC.train.keep)
    resume = manager.at_launch()
    manager.for_ray(resume)
    return resume.checkpoint, resume.known


def ray_loads(run):
    """What Ray Train does with the run folder when the run is launched again: load its record of the checkpoints."""
    from ray.train import CheckpointConfig
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import CheckpointManager
    from ray.train.v2._internal.execution.storage import StorageContext

    CheckpointManager(CheckpointConfig(num_to_keep=3), StorageContext(str(run.parent), run.name))


def test_a_checkpoint_folder_deleted_by_hand_leaves_rays_record_of_the_run(tmp_path):
    """Ray refuses to relaunch a run whose record names a checkpoint folder that is gone (deleted to free a disk); at
    launch the record forgets it, and Ray's own checkpoint manager then loads it with the folders that are left."""
    import shutil

    from ray.train.v2._internal.exceptions import CheckpointManagerInitializationError

    run = tmp_path / "run"
    write_ray_record(run, [10, 20, 30])
    ray_loads(run)
    before = (run / layout.RAY_RECORD).read_bytes()
    assert ckpt.CheckpointManager(layout.RunLayout(str(run))).forget_deleted(folders.list_checkpoints(RunLayout(str(run)))) == []  # nothing deleted: nothing to forget
    assert (run / layout.RAY_RECORD).read_bytes() == before
    for step in (10, 30):
        shutil.rmtree(run / layout.checkpoint_name(step))
    with pytest.raises(CheckpointManagerInitializationError, match="does not exist anymore"):
        ray_loads(run)
    newest, known = at_launch(run)
    assert newest == str(run / layout.checkpoint_name(20)) and known == [layout.checkpoint_name(20)]
    ray_loads(run)
    record = json.loads((run / layout.RAY_RECORD).read_text())
    assert [r["checkpoint_dir_name"] for r in record["checkpoint_results"]] == [layout.checkpoint_name(20)]
    assert record["checkpoint_report_indices"] == [1] and record["current_report_index"] == 3
    assert record["latest_checkpoint_result"]["checkpoint_dir_name"] == layout.checkpoint_name(20)


def test_a_damaged_record_of_ray_is_set_aside_with_a_warning_and_the_run_resumes(tmp_path):
    """A record that a full disk cut short (Ray writes it in place) made Ray refuse the relaunch with an error from
    inside its controller; at launch it is moved aside, byte for byte, and Ray starts a new one."""
    from ray.train.v2._internal.exceptions import CheckpointManagerInitializationError

    run = tmp_path / "run"
    write_ray_record(run, [10, 20])
    good = (run / layout.RAY_RECORD).read_bytes()
    cut = good[:100]
    (run / layout.RAY_RECORD).write_bytes(cut)
    with pytest.raises(CheckpointManagerInitializationError, match="Unterminated string"):
        ray_loads(run)
    (run / (layout.RAY_RECORD + ".damaged")).write_bytes(b"an earlier one")  # never overwritten
    with pytest.warns(UserWarning, match="record of run .* was damaged .not JSON: Unterminated string") as warned:
        newest, known = at_launch(run)
    aside = run / (layout.RAY_RECORD + ".damaged-1")
    assert str(aside) in str(warned[0].message) and "--keep counts only" in str(warned[0].message)
    assert newest == str(run / layout.checkpoint_name(20)) and known == [layout.checkpoint_name(10), layout.checkpoint_name(20)]
    assert aside.read_bytes() == cut and (run / (layout.RAY_RECORD + ".damaged")).read_bytes() == b"an earlier one"
    assert not (run / layout.RAY_RECORD).exists()
    ray_loads(run)
    (run / layout.RAY_RECORD).write_bytes(good)  # a readable record is left where it is
    at_launch(run)
    assert (run / layout.RAY_RECORD).read_bytes() == good


def _unlisted_latest(record):
    record["latest_checkpoint_result"] = {**record["latest_checkpoint_result"], "checkpoint_dir_name": "checkpoint_9"}


@pytest.mark.parametrize("damage, problem", [
    (lambda record: record.clear(), "not in Ray's format: checkpoint_results: Field required (and 7 more)"),  # `{}`
    (lambda record: record.update(checkpoint_results="all"), "not in Ray's format: checkpoint_results: Input should"),
    (lambda record: record["checkpoint_report_indices"].pop(), "differ in length"),
    (_unlisted_latest, "names checkpoints it does not list (checkpoint_9)"),
], ids=["empty", "wrong-type", "short-list", "unlisted-latest"])
def test_a_record_of_ray_in_a_shape_ray_cannot_load_is_set_aside_too(tmp_path, damage, problem):
    """JSON that Ray's checkpoint manager still refuses (its schema, its own consistency checks) failed the relaunch
    inside Ray's controller, as an ActorDiedError; at launch it is set aside like a cut record, naming what is wrong."""
    run = tmp_path / "run"
    write_ray_record(run, [10, 20])
    record = json.loads((run / layout.RAY_RECORD).read_text())
    damage(record)
    (run / layout.RAY_RECORD).write_text(json.dumps(record))
    with pytest.raises(Exception):  # noqa: B017 (Ray's own error differs by damage: what matters is that it refuses)
        ray_loads(run)
    with pytest.warns(UserWarning, match="record of run .* was damaged") as warned:
        newest, _ = at_launch(run)
    assert problem in str(warned[0].message) and "\n" not in str(warned[0].message)
    assert newest == str(run / layout.checkpoint_name(20)) and not (run / layout.RAY_RECORD).exists()
    assert json.loads((run / (layout.RAY_RECORD + ".damaged")).read_text()) == record  # kept byte for byte
    ray_loads(run)


def test_deleting_a_folder_already_gone_or_going_is_not_an_error(tmp_path):
    """Two hands deleting one checkpoint (a retention callback and a settle, on the H100 study) raised
    FileNotFoundError in the second; one owner deletes now, and a folder gone is no error either way."""
    import threading

    from hybrid_ray import storage

    storage.remove_dir(str(tmp_path / "never-there"))
    for _ in range(5):
        folder = tmp_path / "checkpoint_00000050"
        for i in range(300):
            (folder / f"d{i % 10}").mkdir(parents=True, exist_ok=True)
            (folder / f"d{i % 10}" / f"f{i}").write_bytes(b"x")
        errors = []

        def delete():
            try:
                storage.remove_dir(str(folder))
            except Exception as e:  # noqa: BLE001 - the test reports what either hand raised
                errors.append(e)

        hands = [threading.Thread(target=delete) for _ in range(3)]
        for hand in hands:
            hand.start()
        for hand in hands:
            hand.join()
        assert not errors and not folder.exists()
