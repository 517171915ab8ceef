"""The CLI without a cluster: listing, verify, spec resolution and bad input (one line, non-zero, no traceback)."""

import json
from pathlib import Path

import click
import pytest
import yaml

from hybrid_ray.cli import cli, main


def run(capsys, *args):
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, err, expected_rc, fragment):
    assert rc == expected_rc
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
    assert "Traceback" not in err


def test_variants_table_and_json(capsys):
    rc, out, _ = run(capsys, "variants")
    assert rc == 0 and "h100_hybrid_sparse" in out and "255.4M" in out and "5,11" in out
    rc, out, _ = run(capsys, "variants", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert len(rows) == 13 and rows["h100_deltanet"]["params"]["total"] == 274_364_448


@pytest.mark.parametrize("group", [[], ["runs"], ["kernels"], ["jobs"], ["data"]])
def test_a_command_group_alone_prints_its_help(capsys, group):
    """`hybrid-ray` (a new user's first command) and a group without its sub-command: the help, not an error."""
    rc, out, err = run(capsys, *group)
    assert rc == 0 and err == "" and out.startswith(f"Usage: {' '.join(['hybrid-ray', *group])} [OPTIONS] COMMAND")
    assert "Commands:" in out


def test_verify_reports_versions_and_cpu_fallback(capsys):
    import subprocess

    import torch

    import hybrid_ray

    rc, out, _ = run(capsys, "verify")
    assert rc == 0
    lines = dict(line.split(None, 1) for line in out.splitlines() if line and not line.startswith(("GPU", " ")))
    assert lines["torch"].startswith(torch.__version__) and lines["gpus"] == "none"
    repo = Path(hybrid_ray.__file__).parent.parent
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert lines["hybrid-ray"].startswith("0.1.0") and (not commit or commit[:12] in lines["hybrid-ray"])
    assert "site-packages" in lines["fla"] and "torch SDPA" in lines["attention"]
    assert "no CUDA GPU here; training runs on CPU with the pure-PyTorch backend" in out
    rc, _, err = run(capsys, "verify", "--require-gpu")
    assert_one_line_error(rc, err, 1, "no CUDA GPU")


def test_default_spec_is_the_tiny_hybrid_and_flags_override_it(capsys):
    rc, out, _ = run(capsys, "train", "--dry-run")
    spec = yaml.safe_load(out)
    assert rc == 0 and spec["name"] == "h100_hybrid_sparse-tiny" and spec["model"]["hidden_size"] == 64
    rc, out, _ = run(capsys, "train", "--dry-run", "--variant", "h100_transformer", "--steps", "7", "--lr", "3e-4",
                     "--attention-ratio", "0.5", "--num-workers", "2")
    spec = yaml.safe_load(out)
    assert spec["train"]["steps"] == 7 and spec["optim"]["lr"] == 3e-4 and spec["scale"]["num_workers"] == 2
    assert spec["model"]["attn_layers"] == [1, 3, 5, 7, 9, 11] and spec["name"] == "h100_transformer-attn50"


def test_a_dry_run_says_which_size_it_is_and_the_warm_up_it_uses(capsys, recwarn):
    """Issue 46: `--preset h100` (the original scripts' 120 x 1024, 10,000 steps) is not the variants' H100 base
    size (48 x 1024, 1,000 steps): the dry run's first line names which one the spec is; and a run shorter than its
    warm-up says so in one warning line, its spec holding the warm-up it uses."""
    rc, out, err = run(capsys, "train", "--dry-run")
    assert rc == 0 and err == "" and out.splitlines()[0] == (
        "# size: preset tiny, CPU debug size: trains in about a minute on 2 cores (64 wide, 6 layers, 8 x 128 tokens a "
        "step, 200 steps)")
    rc, out, _ = run(capsys, "train", "--dry-run", "--variant", "h100_deltanet")
    assert out.splitlines()[0] == ("# size: the variants' H100 base size (768 wide, 12 layers, 48 x 1024 tokens a step, "
                                   "1,000 steps; no --preset), not --preset h100 (the original scripts' long run: 120 x "
                                   "1024 tokens a step, 10,000 steps)")
    rc, out, _ = run(capsys, "train", "--dry-run", "--variant", "h100_deltanet", "--preset", "h100")
    assert out.splitlines()[0] == ("# size: preset h100, one H100, the original scripts' long run (768 wide, 12 layers, "
                                   "120 x 1024 tokens a step, 10,000 steps); not the variants' H100 base size (48 x 1024 "
                                   "tokens a step, 1,000 steps: no --preset)")
    assert yaml.safe_load(out)["train"]["batch_size"] == 120
    assert not recwarn.list
    rc, out, err = run(capsys, "train", "--dry-run", "--steps", "10")
    assert rc == 0 and yaml.safe_load(out)["optim"]["warmup_steps"] == 10 and yaml.safe_load(out)["train"]["steps"] == 10
    said = [str(w.message) for w in recwarn.list]  # the console's `warning: ` line (pytest keeps warnings off stderr)
    assert len(said) == 1 and said[0].startswith("the 20-step learning-rate warm-up is longer than the 10-step run"), said
    recwarn.clear()
    rc, out, err = run(capsys, "train", "--dry-run", "--steps", "10", "--warmup-steps", "2")
    assert rc == 0 and not recwarn.list and yaml.safe_load(out)["optim"]["warmup_steps"] == 2


def test_config_file_round_trip(capsys, tmp_path):
    rc, out, _ = run(capsys, "train", "--dry-run", "--preset", "small", "--variant", "h100_hybrid_late")
    path = tmp_path / "run.yaml"
    path.write_text(out)
    rc2, out2, _ = run(capsys, "train", "--dry-run", "--config", str(path))
    assert rc == rc2 == 0 and out2 == out


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--variant", "h100_hybrid_spars"], "unknown variant 'h100_hybrid_spars' (did you mean 'h100_hybrid_sparse'?)"),
        (["--preset", "hugee"], "unknown preset"),
        (["--attention-ratio", "1.5"], "attention ratio must be between 0 and 1"),
        (["--attention-ratio", "-0.2"], "attention ratio must be between 0 and 1"),
        (["--num-workers", "3"], "batch size 8 is not divisible by 3 workers"),
        (["--steps", "0"], "train.steps must be > 0"),
    ],
)
def test_bad_input_is_one_line(capsys, args, fragment):
    rc, _, err = run(capsys, "train", "--dry-run", *args)
    assert_one_line_error(rc, err, 2, fragment)


@pytest.mark.parametrize(
    "model, fragment",
    [
        ({"attn_layers": [4]}, "attention layer index 4 out of range for 4 layers"),
        ({"attn_layers": [3], "attn_num_heads": 5}, "must be divisible by model.attn_num_heads (5)"),
        ({"attn_layers": [3], "attn_num_kv_heads": 3, "attn_num_heads": 2}, "must be divisible by model.attn_num_kv_heads (3)"),
        ({"num_v_heads": 3}, "must be a multiple of model.num_heads"),
        ({"hidden_sise": 3}, "did you mean 'hidden_size'"),
    ],
)
def test_bad_model_config_is_one_line(capsys, tmp_path, model, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"model": {"hidden_size": 64, "num_layers": 4, "num_heads": 2, **model}}))
    rc, _, err = run(capsys, "train", "--dry-run", "--config", str(path))
    assert_one_line_error(rc, err, 2, fragment)


def test_missing_and_broken_config_files(capsys, tmp_path):
    rc, _, err = run(capsys, "train", "--dry-run", "--config", str(tmp_path / "nope.yaml"))
    assert_one_line_error(rc, err, 2, "cannot read spec file")
    (tmp_path / "broken.yaml").write_text("model: [unclosed")
    rc, _, err = run(capsys, "train", "--dry-run", "--config", str(tmp_path / "broken.yaml"))
    assert_one_line_error(rc, err, 2, "not valid YAML")


def test_click_usage_errors_are_one_line_too(capsys):
    rc, _, err = run(capsys, "train", "--steps", "many")
    assert_one_line_error(rc, err, 2, "'many' is not a valid integer")


def test_train_flag_set_is_pinned():
    """Adding or removing a flag must be a deliberate change: update this list with the README."""
    flags = sorted(opt for p in cli.commands["train"].params if isinstance(p, click.Option) for opt in p.opts)
    assert flags == sorted([
        "--variant", "--preset", "--config", "--attention-ratio", "--data", "--tokenizer", "--seq-len",
        "--max-documents", "--packed", "--vocab-size", "--num-heads", "--head-dim", "--steps", "--lr", "--warmup-steps", "--batch-size", "--micro-batch-size", "--num-workers",
        "--gpus-per-worker", "--cpus-per-worker", "--strategy", "--backend", "--compile", "--conv-backend", "--loss-kernel",
        "--max-failures",
        "--eval-every", "--eval-tokens", "--eval-recall", "--log-every", "--checkpoint-every", "--keep", "--seed", "--name", "--storage-path",
        "--address", "--verbose", "--extend-steps", "--until-step", "--dry-run",
    ])


def test_every_command_that_talks_to_a_cluster_takes_address(capsys):
    """Issue 46: `hybrid-ray jobs --address URL list` was "No such option" though `submit --address` exists. Every
    command that reaches a cluster takes --address; `jobs` takes it before or after its sub-command."""
    commands = [cli.commands[c] for c in ("train", "sweep", "eval", "submit", "jobs")]
    commands += list(cli.commands["jobs"].commands.values())
    for command in commands:
        assert "--address" in [o for p in command.params for o in p.opts], command.name
    for args in (["jobs", "--address", "http://127.0.0.1:9", "list"], ["jobs", "list", "--address", "http://127.0.0.1:9"],
                 ["jobs", "--address", "http://127.0.0.1:9", "status", "raysubmit_x"]):
        rc, _, err = run(capsys, *args)
        assert_one_line_error(rc, err, 1, "cannot reach the Ray cluster at 127.0.0.1:9")
    rc, _, err = run(capsys, "jobs", "--address", "http://127.0.0.1:9", "stop", "x", "--address", "http://127.0.0.1:8")
    assert_one_line_error(rc, err, 2, "two --address values, http://127.0.0.1:9 and http://127.0.0.1:8")


def test_every_job_file_resolves_for_hybrid_ray_and_for_ray():
    """Each job file names a registered variant and preset, its sweep grid parses, and Ray accepts its runtime_env."""
    from pathlib import Path

    from ray.runtime_env import RuntimeEnv

    from hybrid_ray.config import build
    from hybrid_ray.config.grid import expand, parse_grid
    from hybrid_ray.config.variants import VARIANTS
    from hybrid_ray.sweep.options import sweep_options

    files = sorted(Path(__file__).parent.parent.joinpath("jobs").glob("*.yaml"))
    assert {f.stem for f in files} >= {"tiny_local", "ratio_ablation", "ratio_ablation_small", "lr_ablation",
                                        "lr_ablation_small", "exp7_hybrid_sparse"}
    for path in files:
        job = build.load(path)
        assert job.spec.variant in VARIANTS, path
        RuntimeEnv(**job.runtime_env)  # what `ray job submit --runtime-env` builds from the same file
        assert job.runtime_env["working_dir"] == "." and ".env*" in job.runtime_env["excludes"]
        if job.command == "sweep":
            options = sweep_options(job.sweep)
            assert expand(job.spec, parse_grid(options.grid)), path
    ratio = build.load(files[[f.stem for f in files].index("ratio_ablation")])
    assert len(expand(ratio.spec, parse_grid(sweep_options(ratio.sweep).grid))) == 13
    assert ratio.spec.model.hidden_size == 768 and ratio.spec.train.batch_size == 48  # the original H100 size


def test_a_job_file_with_a_typo_is_one_line(capsys, tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("hybrid_ray:\n  command: train\n  varient: h100_deltanet\n")
    rc, _, err = run(capsys, "train", "--dry-run", "--config", str(path))
    assert_one_line_error(rc, err, 2, "unknown key hybrid_ray.varient (did you mean 'variant'?)")


def test_train_config_of_a_sweep_job_file_points_at_sweep(capsys, tmp_path, monkeypatch):
    """Issue 36: `hybrid-ray train --config jobs/ratio_ablation_small.yaml` silently trained one run of the grid's base
    spec. Refused in one line naming the sweep command, before anything is written (or submitted)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    job = str(Path(__file__).parent.parent / "jobs" / "ratio_ablation_small.yaml")
    for extra in ([], ["--dry-run"]):
        rc, out, err = run(capsys, "train", "--config", job, *extra)
        assert_one_line_error(rc, err, 2, "is a sweep job file (command: sweep)")
        assert f"run it with `hybrid-ray sweep --config {job}`" in err and out == ""
    assert not (tmp_path / "hybrid-ray-runs").exists()
    rc, _, err = run(capsys, "submit", "--address", "http://127.0.0.1:9", "--", "train", "--config", job)
    assert_one_line_error(rc, err, 2, f"`hybrid-ray sweep --config {job}` (nothing was submitted)")
    rc, out, _ = run(capsys, "train", "--dry-run", "--config", str(Path(job).with_name("tiny_local.yaml")))
    assert rc == 0 and yaml.safe_load(out)["name"]  # a train job file still trains


def test_data_prepare_prints_documents_tokens_and_shards(capsys, tmp_path):
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps({"text": f"document {i} " * 20}) for i in range(40)))
    rc, out, _ = run(capsys, "data", "prepare", "--data", str(tmp_path / "docs.jsonl"))
    assert rc == 0
    assert "documents" in out and "tokens" in out and "train.bin" in out and "val.bin" in out
    assert "byte" in out


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--data", "/nonexistent/x.jsonl"], "data source not found: /nonexistent/x.jsonl"),
        (["--tokenizer", "no-such-org/no-such-tokenizer"], "could not load tokenizer"),
    ],
)
def test_data_prepare_bad_input_is_one_line(capsys, args, fragment):
    rc, _, err = run(capsys, "data", "prepare", *args)
    err = "\n".join(line for line in err.splitlines() if not line.startswith("tokenizing"))  # progress bar
    assert_one_line_error(rc, err, 1, fragment)


def test_help_gives_every_default_that_matters(capsys):
    rc, out, _ = run(capsys, "train", "--help")
    assert rc == 0 and "~/hybrid-ray-runs" in out and "[default: 1]" in out and "FSDP2" in out
    rc, out, _ = run(capsys, "--help")
    assert "HYBRID_RAY_CACHE" in out and "~/.cache/hybrid-ray" in out
    for command in ("sweep", "submit", "eval", "generate", "compare"):
        rc, out, _ = run(capsys, command, "--help")
        assert rc == 0 and "Usage: hybrid-ray " + command in out


def test_data_inspect_describes_and_samples(capsys, tmp_path):
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps({"text": f"document number {i} " * 5}) for i in range(400)))
    rc, out, _ = run(capsys, "data", "inspect", "--data", str(tmp_path / "docs.jsonl"), "--samples", "2", "--chars", "40")
    assert rc == 0 and "validation document 1" in out and "validation document 2" in out and "document number" in out
    assert "train:" in out and "val:" in out


@pytest.mark.parametrize("name", ["binary.yaml", "binary.json"])
def test_a_binary_config_file_is_one_line(capsys, tmp_path, name):
    path = tmp_path / name
    path.write_bytes(bytes(range(128, 256)) * 3)
    for command in (["train", "--dry-run"], ["data", "prepare"]):
        rc, _, err = run(capsys, *command, "--config", str(path))
        assert_one_line_error(rc, err, 2, "is not a text (UTF-8) YAML/JSON file")
    rc, _, err = run(capsys, "submit", "--dry-run", str(path))
    assert_one_line_error(rc, err, 2, "is not a text (UTF-8) YAML/JSON file")
