"""hybrid-ray: train and compare hybrid Gated DeltaNet / softmax-attention language models on Ray.

    import hybrid_ray as hr
    quick = {"train.steps": 30, "data.max_documents": 200}  # a first try: a few steps on a slice of the corpus
    spec = hr.build_spec(variant="h100_hybrid_sparse", preset="tiny", overrides=quick)
    outcome = hr.train.train(spec)  # Ray Train, in ~/hybrid-ray-runs (storage_path); relaunching the name resumes
    print(outcome.run_dir, outcome.results["final"]["val_loss"])
    base = hr.sweep_base(preset="tiny", overrides=quick)
    done = hr.sweep.sweep(base, hr.SweepOptions(grid=["attention_ratio=0,0.5"]))  # Ray Tune, ASHA
    print(done.table)  # sweep.json and sweep.png in done.sweep_dir
    print(hr.generate(outcome.run_dir, ["def main("], hr.SamplingOptions()).completions[0])
    print(hr.evaluate_task(outcome.run_dir, "recall")["score"])

(tests/test_package.py runs this example as it stands here, in a fresh process.)

`train` and `sweep` are packages (train/, sweep/) whose face exports the function of their name: a top-level
function of that name would be replaced by the package as soon as anything in it is imported. The other names are
imported on first use (PEP 562): `import hybrid_ray` loads neither Ray nor torch, and `generate` or `evaluate_task`
never import Ray.
"""

from __future__ import annotations

from hybrid_ray.lazy import exports

_HOMES = {
    "RunSpec": "spec",
    "build_spec": "config.build", "sweep_base": "config.build",
    "variant_spec": "config.variants",
    "TrainOutcome": "train.launch",
    "SweepOptions": "sweep.options",
    "generate": "inference.generate", "SamplingOptions": "inference.generate",
    "evaluate_task": "evals.downstream",
    "list_runs": "records.folders",
    "RunLayout": "layout", "SweepLayout": "layout",
}
__all__ = sorted(_HOMES)


_PACKAGES = ("train", "sweep")  # `hr.train.train(spec)`, `hr.sweep.sweep(base, options)`

__getattr__ = exports(__name__, _HOMES, _PACKAGES)
