"""One declaration per spec flag (spec.FLAGS), one spec builder (config/build.py, build_spec), one ratio rule
(variants.ratio_spec) and one sweep-settings merge (sweep.options.sweep_options). No Ray, no training."""

import click
import pytest
import yaml

from hybrid_ray.cli import cli, main
from hybrid_ray.config import build
from hybrid_ray.config.grid import expand, parse_grid
from hybrid_ray.config.variants import ratio_label, ratio_spec, variant_spec
from hybrid_ray.errors import SpecError
from hybrid_ray.spec import FLAGS, RunSpec, flag_overrides
from hybrid_ray.sweep.options import sweep_options

# The CLI's flags, written out: a flag added, renamed or dropped must be a deliberate change (update this with the
# README). Every command that builds a spec starts from --variant/--preset/--config/--attention-ratio.
START = ["--variant", "--preset", "--config", "--attention-ratio"]
DATA = ["--data", "--tokenizer", "--seq-len", "--max-documents", "--packed", "--no-packed", "--vocab-size"]
RUN = ["--num-heads", "--head-dim", "--steps", "--lr", "--warmup-steps", "--batch-size", "--micro-batch-size", "--num-workers", "--gpus-per-worker", "--cpus-per-worker",
       "--strategy", "--backend", "--compile", "--no-compile", "--conv-backend", "--loss-kernel", "--max-failures", "--eval-every", "--eval-tokens",
       "--eval-recall", "--no-eval-recall", "--log-every", "--checkpoint-every", "--keep", "--seed", "--name", "--storage-path"]
CLUSTER = ["--address", "--verbose"]
FLAG_SETS = {
    "train": [*START, *DATA, *RUN, *CLUSTER, "--extend-steps", "--until-step", "--dry-run"],
    "sweep": [*START, *DATA, *RUN, *CLUSTER, "--grid", "--seeds", "--scheduler", "--grace-period", "--reduction-factor",
              "--max-concurrent", "--gpus-per-trial", "--match-params", "--reference-arm", "--eval-task", "--eval-data",
              "--keep-checkpoints", "--tune-lr", "--lr-grid", "--tune-steps", "--dry-run", "--assume-gpus", "--assume-gpu-memory", "--assume-free-disk"],
    "submit": ["--address", "--fla", "--no-check", "--no-wait", "--dry-run", "--working-dir", "--exclude", "--verbose"],
    "warmup": [*START, *DATA, *RUN, "--grid", "--match-params"],
    "jobs": ["--address"],  # before its sub-command too, as submit's (issue 46)
    "jobs list": ["--address", "--json"],
    "jobs status": ["--address", "--json"],
    "jobs logs": ["--address", "--follow"],
    "jobs stop": ["--address"],
    "data prepare": [*START, *DATA, "--verify"],
    "data inspect": [*START, *DATA, "--samples", "--chars"],
}


def command(path: str) -> click.Command:
    found = cli
    for part in path.split():
        found = found.commands[part]
    return found


@pytest.mark.parametrize("path", FLAG_SETS)
def test_each_commands_flag_set_is_pinned(path):
    flags = [o for p in command(path).params if isinstance(p, click.Option) for o in (*p.opts, *p.secondary_opts)]
    assert sorted(flags) == sorted(FLAG_SETS[path])


def test_every_spec_flag_sets_its_field(capsys):
    """Each flag of spec.FLAGS, given on the command line, lands in the resolved spec at its dotted key."""
    values = {  # flag value, value in the spec
        "data.source": ("mqar", "mqar"), "data.tokenizer": ("byte", "byte"), "data.seq_len": ("64", 64),
        "data.max_documents": ("5", 5), "data.packed": (None, True), "model.vocab_size": ("512", 512),
        "model.num_heads": ("3", 3), "model.head_dim": ("16", 16), "train.steps": ("7", 7), "optim.lr": ("3e-4", 3e-4), "optim.warmup_steps": ("3", 3), "train.batch_size": ("16", 16),
        "train.micro_batch_size": ("4", 4), "scale.num_workers": ("2", 2), "scale.gpus_per_worker": ("0.5", 0.5),
        "scale.cpus_per_worker": ("2", 2.0), "scale.strategy": ("ddp", "ddp"), "scale.backend": ("torch", "torch"),
        "train.compile": (None, True), "train.conv_backend": ("triton", "triton"),
        "train.loss_kernel": ("fused-linear", "fused-linear"), "scale.max_failures": ("1", 1), "train.eval_every": ("3", 3),
        "train.eval_tokens": ("100", 100), "train.eval_recall": (None, True), "train.log_every": ("2", 2), "train.checkpoint_every": ("4", 4),
        "train.keep": ("2", 2), "train.seed": ("5", 5), "name": ("flagged", "flagged"), "storage_path": ("/tmp/x", "/tmp/x"),
    }
    assert sorted(values) == sorted(f.key for f in FLAGS)  # a new flag needs a case here
    args = [a for f in FLAGS for a in ([f"--{f.option}"] + ([values[f.key][0]] if values[f.key][0] is not None else []))]
    assert main(["train", "--dry-run", *args]) == 0
    spec = yaml.safe_load(capsys.readouterr().out)
    for key, (_, expected) in values.items():
        section, _, leaf = key.rpartition(".")
        assert (spec[section] if section else spec)[leaf] == expected, key
    assert main(["train", "--dry-run", "--vocab-size", "lots"]) == 2
    assert capsys.readouterr().err.strip() == "error: --vocab-size must be a number or 'auto', got 'lots'"


def test_build_spec_is_the_builder_of_the_cli_and_of_job_files(tmp_path):
    tiny = build.build_spec()
    assert tiny == variant_spec("h100_hybrid_sparse", "tiny")  # nothing given: the tiny default hybrid
    assert build.build_spec(overrides=flag_overrides({"steps": 9, "lr": None, "vocab_size": "auto"})) == \
        tiny.with_overrides({"train.steps": 9})
    pinned = build.build_spec(overrides={"model.vocab_size": 320})
    assert pinned.model.vocab_size == 320
    assert build.build_spec(config=_save(tmp_path, pinned), overrides={"model.vocab_size": "auto"}).model.vocab_size is None
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"hybrid_ray": {"variant": "h100_deltanet", "preset": "small", "name": "j",
                                                  "overrides": {"train.steps": 3}}}))
    assert build.load(job).spec == build.build_spec(variant="h100_deltanet", preset="small",
                                                        overrides={"train.steps": 3, "name": "j"})
    assert build.build_spec(config=job, attention_ratio=0.5).name == "j-attn50"
    with pytest.raises(SpecError, match="--config already defines the run"):
        build.build_spec(config=job, variant="h100_deltanet")


def _save(tmp_path, spec: RunSpec) -> str:
    path = tmp_path / "spec.yaml"
    spec.save(path)
    return str(path)


def test_a_ratio_sweeps_arms_use_ratio_spec_and_keep_their_names():
    """The arm ids a ratio sweep has always had (sweep folders and tables), and arm specs that keep the sweep's name:
    ratio_spec's `<name>-attnNN` is the run name of --attention-ratio only."""
    base = variant_spec("h100_hybrid_sparse").with_overrides({"name": "sw"})
    arms = expand(base, parse_grid(["attention_ratio"]))
    assert [a.id for a in arms] == ["attn0", "attn8", "attn17", "attn25", "attn33late", "attn42", "attn50", "attn58",
                                    "attn67", "attn75", "attn83", "attn92", "attn100"]
    late = arms[4]
    assert late.spec.name == "sw" and late.spec.variant == "h100_hybrid_late"
    assert late.spec.model.attn_layers == ratio_spec("h100_hybrid_late", base).model.attn_layers == [8, 9, 10, 11]
    (half,) = expand(base, parse_grid(["attention_ratio=0.5"]))
    assert (half.id, half.spec.name, half.spec.variant) == ("attn50", "sw", None)
    assert half.spec.model == ratio_spec(0.5, base).model and ratio_spec(0.5, base).name == "sw-attn50"
    (named,) = expand(base, parse_grid(["variant=h100_deltanet"]))
    assert (named.id, named.spec.name, named.spec.variant, named.spec.optim.lr) == ("h100_deltanet", "sw", "h100_deltanet", 1e-3)
    assert ratio_label(1 / 3) == "attn33" and ratio_label("h100_hybrid_late") == "attn33late"


def test_sweep_options_puts_flags_over_the_job_files_settings():
    job = {"grid": ["attention_ratio"], "seeds": 2, "match_params": True}
    unset = {"grid": (), "seeds": None, "match_params": None, "eval_tasks": (), "scheduler": None}
    assert sweep_options(job, unset) == sweep_options(job)
    chosen = sweep_options(job, {**unset, "grid": ("lr", "train.keep=1,2"), "seeds": 3, "eval_tasks": ("arc_easy",)})
    assert (chosen.grid, chosen.seeds, chosen.match_params, chosen.eval_tasks) == (
        ["lr", "train.keep=1,2"], 3, True, ["arc_easy"])
    assert sweep_options({"grid": "lr"}).grid == ["lr"]
    with pytest.raises(SpecError, match="unknown sweep setting 'seed' \\(did you mean 'seeds'\\?\\)"):
        sweep_options({"grid": ["lr"], "seed": 2})
