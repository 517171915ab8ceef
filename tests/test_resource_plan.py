"""One resource plan sizes a run (train) and a sweep's trials (sweep) against the cluster, and the sweep's Tuner
neither retries a failed trial nor stops the others for it."""

import pytest

from hybrid_ray.config.variants import variant_spec
from hybrid_ray.errors import ClusterError, SpecError
from hybrid_ray.spec import RunSpec
from hybrid_ray.sweep import tuner
from hybrid_ray.train import plan as run_plan
from hybrid_ray.train import launch

TINY = variant_spec("h100_hybrid_sparse", "tiny").with_overrides({"model.vocab_size": 8192, "model.num_layers": 2,
                                                                   "model.attn_layers": [1]})


def scaled(**scale):
    return TINY.with_overrides({f"scale.{k}": v for k, v in scale.items()})


def test_a_run_gets_one_gpu_per_worker_when_the_cluster_has_one_for_each():
    cpu = run_plan.plan(scaled(num_workers=2), {"CPU": 2.0})
    assert (cpu.gpus_per_worker, cpu.use_gpu, cpu.worker_resources) == (0.0, False, {"CPU": 1})
    assert cpu.holds == {"CPU": 2, "GPU": 0.0} and cpu.concurrent == 1
    gpu = run_plan.plan(scaled(num_workers=2, cpus_per_worker=4), {"CPU": 16.0, "GPU": 2.0})
    assert (gpu.gpus_per_worker, gpu.use_gpu, gpu.worker_resources) == (1.0, True, {"CPU": 4, "GPU": 1.0})
    assert run_plan.plan(scaled(num_workers=4), {"CPU": 16.0, "GPU": 2.0}).gpus_per_worker == 0.0  # too few GPUs
    assert run_plan.plan(scaled(gpus_per_worker=0.5), {"CPU": 1.0, "GPU": 1.0}).worker_resources == {"CPU": 1,
                                                                                                       "GPU": 0.5}


def test_what_the_cluster_cannot_hold_is_one_line():
    with pytest.raises(ClusterError, match=r"^asked for 1 worker\(s\) x 1 GPU but the cluster has 0 GPU\(s\); drop "
                                           r"--gpus-per-worker to train on CPUs$"):
        run_plan.plan(scaled(gpus_per_worker=1), {"CPU": 2.0})
    with pytest.raises(ClusterError, match=r"^asked for 2 worker\(s\) x 1 GPU but the cluster has 1 GPU\(s\)$"):
        run_plan.plan(scaled(num_workers=2, gpus_per_worker=1), {"CPU": 2.0, "GPU": 1.0})
    with pytest.raises(ClusterError, match=r"^asked for 1 worker\(s\) x 64 CPU but the cluster has 2 CPU\(s\)$"):
        run_plan.plan(scaled(cpus_per_worker=64), {"CPU": 2.0})
    with pytest.raises(SpecError, match="--backend fla needs GPU workers"):
        run_plan.plan(scaled(backend="fla"), {"CPU": 2.0})
    with pytest.raises(SpecError, match=r"--gpus-per-trial 1 is more than the cluster's 0 GPU\(s\)"):
        run_plan.plan(TINY, {"CPU": 2.0}, trial=True, gpus_per_trial=1)
    with pytest.raises(ClusterError, match=r"one trial holds 2.01 CPU"):
        run_plan.plan(scaled(cpus_per_worker=2), {"CPU": 2.0}, trial=True)


def test_a_sweeps_trial_holds_its_own_share_and_its_workers_and_packs_by_both():
    on_cpus = run_plan.plan(TINY, {"CPU": 4.0}, trial=True)
    assert on_cpus.holds == run_plan.trial_footprint(TINY, 0.0) and on_cpus.holds["CPU"] == 1.01
    assert on_cpus.concurrent == 3 and not on_cpus.use_gpu
    assert run_plan.plan(TINY, {"CPU": 4.0}, trial=True, max_concurrent=2).concurrent == 2
    shared = run_plan.plan(TINY, {"CPU": 16.0, "GPU": 1.0}, trial=True, gpus_per_trial=0.25)
    assert (shared.gpus_per_worker, shared.concurrent, shared.holds["GPU"]) == (0.25, 4, 0.25)
    assert shared.apply(TINY).scale.gpus_per_worker == 0.25  # what the trial's own train() then plans with
    # the default on GPUs: one per worker, whatever the count of GPUs (the trials queue for them)
    two = run_plan.plan(scaled(num_workers=2), {"CPU": 16.0, "GPU": 4.0}, trial=True)
    assert (two.gpus_per_worker, two.holds["GPU"], two.concurrent) == (1.0, 2.0, 2)
    assert two.worker_resources == {"CPU": 1, "GPU": 1.0}


def test_train_scales_its_workers_by_the_plan(monkeypatch):
    monkeypatch.setattr(launch.cluster, "resources", lambda: {"CPU": 8.0, "GPU": 2.0})
    scaling, use_gpu = launch._scaling(scaled(num_workers=2, cpus_per_worker=3))
    assert use_gpu and scaling.num_workers == 2 and scaling.use_gpu
    assert scaling.resources_per_worker == {"CPU": 3, "GPU": 1.0}
    monkeypatch.setattr(launch.cluster, "resources", lambda: {"CPU": 2.0})
    scaling, use_gpu = launch._scaling(scaled(num_workers=2))
    assert not use_gpu and not scaling.use_gpu and scaling.resources_per_worker == {"CPU": 1}


def test_a_failed_trial_is_not_retried_the_others_go_on_and_a_relaunch_resumes_it(ray_session, tmp_path):
    from ray import tune

    attempts = tmp_path / "attempts"
    attempts.mkdir()

    def trial(config):
        with open(attempts / str(config["x"]), "a") as f:
            f.write(".")
        if config["x"] == 1:
            raise ValueError("this trial fails")
        tune.report({"x": config["x"]})

    base = RunSpec(name="failures", storage_path=str(tmp_path))
    trainable = tune.with_resources(trial, {"CPU": run_plan.TRIAL_CPU})
    config = tuner.run_config(base, [])
    assert (config.failure_config.max_failures, config.failure_config.fail_fast) == (0, False)
    tune.Tuner(trainable, param_space={"x": tune.grid_search([0, 1, 2])},
               tune_config=tune.TuneConfig(max_concurrent_trials=1), run_config=config).fit()
    tried = {p.name: len(p.read_text()) for p in attempts.iterdir()}
    assert tried == {"0": 1, "1": 1, "2": 1}  # x=1 failed once and was not retried; x=2 still ran
    # a relaunch (as sweep() restores a sweep) runs the failed trial again, and only it
    grid = tune.Tuner.restore(str(tmp_path / "failures"), trainable, resume_unfinished=True, resume_errored=True).fit()
    assert {p.name: len(p.read_text()) for p in attempts.iterdir()} == {"0": 1, "1": 2, "2": 1}
    assert sorted(r.error is not None for r in grid) == [False, False, True]
