"""The package's face: `import hybrid_ray` is cheap, and every name it exports resolves."""

import subprocess
import sys

import hybrid_ray


def test_import_hybrid_ray_loads_neither_ray_nor_torch_and_inference_names_no_ray():
    code = """
import sys
import hybrid_ray
print(sorted(n for n in sys.modules if n.split(".")[0] in ("ray", "torch", "hybrid_ray")))
hybrid_ray.generate, hybrid_ray.evaluate_task, hybrid_ray.SamplingOptions
print(sorted(n for n in sys.modules if n == "ray" or n.startswith("ray.")))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    at_import, after_inference = done.stdout.strip().splitlines()[-2:]
    assert at_import == "['hybrid_ray']" and after_inference == "[]"


def test_every_exported_name_resolves_to_its_home():
    for name in hybrid_ray.__all__:
        value = getattr(hybrid_ray, name)
        assert value.__name__ == name and value.__module__ == f"hybrid_ray.{hybrid_ray._HOMES[name]}", name
    # train/ and sweep/ are packages: their face exports the function of their name
    from hybrid_ray.sweep.tuner import sweep
    from hybrid_ray.train.launch import train

    assert hybrid_ray.train.train is train and hybrid_ray.sweep.sweep is sweep
    try:
        hybrid_ray.no_such_name
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("an unknown name must raise AttributeError")


def test_the_documented_train_and_sweep_names_resolve_in_a_fresh_process():
    """The package docstring's `hr.train.train(spec)` and `hr.sweep.sweep(...)` raised AttributeError in a new
    process (nothing had imported the subpackages yet)."""
    code = "import hybrid_ray as hr\nprint(hr.train.train.__module__, hr.sweep.sweep.__module__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["hybrid_ray.train.launch", "hybrid_ray.sweep.tuner"]
