"""The `hybrid-ray` command: a thin click layer over the library (every command is a library call)."""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import sys
import warnings
from collections.abc import Callable
from typing import Any

import click

from hybrid_ray.config import build
from hybrid_ray.config.variants import DEFAULT_PRESET, DEFAULT_VARIANT, PRESETS, size_line
from hybrid_ray.errors import HybridRayError, SpecError
from hybrid_ray.spec import FLAGS, Flag, RunSpec, flag_overrides

DEFAULT_STORAGE = RunSpec.storage_path


def build_spec(
    config: str | None,
    variant: str | None,
    preset: str | None,
    attention_ratio: float | None = None,
    **flags: Any,
) -> RunSpec:
    """The run spec of a command's options: build.build_spec with the spec flags (spec.FLAGS) as overrides."""
    return build.build_spec(config=config, variant=variant, preset=preset, attention_ratio=attention_ratio,
                              overrides=flag_overrides(flags))


def sweep_base(config: str | None, variant: str | None, preset: str | None, attention_ratio: float | None = None,
               grid: list[str] | None = None, **flags: Any) -> RunSpec:
    """A sweep's base spec from its command's options: build.sweep_base with the spec flags as overrides, after
    refusing a flag that one of the `grid`'s axes would replace in every arm."""
    overrides = flag_overrides(flags)
    if grid:
        from hybrid_ray.config.grid import check_flags, parse_grid

        check_flags(parse_grid(grid), variant=variant, attention_ratio=attention_ratio, overrides=overrides)
    return build.sweep_base(config=config, variant=variant, preset=preset, attention_ratio=attention_ratio,
                              overrides=overrides)


def _options(*options):
    """Apply click options in the order given (click would otherwise list them reversed)."""

    def apply(f):
        for option in reversed(options):
            f = option(f)
        return f

    return apply


def _flag_option(flag: Flag) -> Callable:
    """The click option of a spec field (spec.FLAGS): its type follows the field's; no default (the spec has it)."""
    if flag.type == "bool":
        return click.option(f"--{flag.option}/--no-{flag.option}", default=None, help=flag.help)
    types = {"int": int, "float": float, "str": str}
    kind = click.Choice(flag.choices) if flag.choices else str if flag.parse else types[flag.type]
    return click.option(f"--{flag.option}", type=kind, help=flag.help)


def spec_flags(group: str) -> list[Callable]:
    """The click options of a group of spec.FLAGS (data or run), in its order."""
    return [_flag_option(flag) for flag in FLAGS if flag.group == group]


SPEC_OPTIONS = _options(
    click.option("--variant", help=f"Named variant (`hybrid-ray variants` lists them). [default: {DEFAULT_VARIANT}]"),
    click.option("--preset", help=f"Model size preset: {', '.join(PRESETS)}. [default: {DEFAULT_PRESET} when neither "
                                  "--variant nor --config is given, else the H100 base size]"),
    click.option("--config", "config", type=click.Path(dir_okay=False),
                 help="YAML/JSON run spec (a run's results.json or spec.yaml works too: it re-runs that exact spec; "
                      "under the same --name it resumes that run)."),
    click.option("--attention-ratio", type=float, help="Replace the attention layers by this share (0..1)."),
    *spec_flags("data"),
)

TRAIN_OPTIONS = _options(*spec_flags("run"))

CLUSTER_OPTIONS = _options(
    click.option("--address", help="Ray cluster address. [default: $RAY_ADDRESS, else a local Ray on 127.0.0.1]"),
    click.option("--verbose", is_flag=True, help="Show Ray's own log lines and warnings."),
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="hybrid-ray")
def cli() -> None:
    """Train and compare hybrid Gated DeltaNet / attention language models on Ray.

    Token shards and compiled GPU kernels (`hybrid-ray kernels`) are cached in $HYBRID_RAY_CACHE (default
    ~/.cache/hybrid-ray); runs live under --storage-path.
    """


@cli.command()
@SPEC_OPTIONS
@TRAIN_OPTIONS
@CLUSTER_OPTIONS
@click.option("--extend-steps", type=int, default=0, help="Train a (finished) run this many more steps.")
@click.option("--until-step", type=int, help="Stop this launch at this step, resumable.")
@click.option("--dry-run", is_flag=True, help="Print the resolved spec and exit.")
def train(address: str | None, verbose: bool, extend_steps: int, until_step: int | None, dry_run: bool,
          **options: Any) -> None:
    """Train one variant with Ray Train (resumes when the run name exists)."""
    if options.get("config"):
        build.refuse_sweep_file(options["config"])
    spec = build_spec(**options)
    if dry_run:
        spec, warmup = build.warmup_used(spec)
        if warmup:
            warnings.warn(warmup)
        click.echo(f"# {size_line(spec)}\n{spec.to_yaml()}", nl=False)
        return
    from hybrid_ray.train import train as train_run

    _quiet(verbose)
    outcome = train_run(spec, address=address, extend_steps=extend_steps, until_step=until_step, verbose=verbose)
    r = outcome.results
    line = f"{r['status']} at step {r['step']}/{r['total_steps']}"
    if "final" in r:
        line += f": val_loss {r['final']['val_loss']:.4f} (best {r['best']['val_loss']:.4f} at step {r['best']['step']})"
    if outcome.already_done:
        line = f"{spec.name} already {line}; nothing trained" + (
            " (--extend-steps N trains it longer)" if r["status"] == "finished" else " (it is past --until-step)")
    click.echo(line)
    click.echo(f"results: {outcome.run_dir}")


@cli.command()
@SPEC_OPTIONS
@TRAIN_OPTIONS
@CLUSTER_OPTIONS
@click.option("--grid", "grid", multiple=True, metavar="AXIS[=V1,V2]",
              help="A swept axis; repeat to combine as a product: attention_ratio (the 13 named layouts; those a "
                   "depth builds alike are one arm), lr (7 values, x1/4 ... x4 each arm's own LR), variant=A,B, or any "
                   "spec field such as train.batch_size=16,32.")
@click.option("--seeds", type=int, help="Runs of every arm (train.seed + 0..N-1). [default: 1]")
@click.option("--scheduler", type=click.Choice(["asha", "fifo"]),
              help="asha stops weak arms on validation loss at each evaluation; fifo runs the full grid. [default: asha]")
@click.option("--grace-period", type=int, help="Evaluations before ASHA may stop a trial; never inside the "
              "learning-rate warm-up. [default: the first evaluation after the warm-up, at least a quarter of the run]")
@click.option("--reduction-factor", type=int, help="ASHA keeps 1 in this many at each rung. [default: 3]")
@click.option("--max-concurrent", type=int, help="Trials at a time. [default: as many as fit: a trial's workers' "
                                                  "CPUs and GPUs plus 0.01 CPU for the trial itself]")
@click.option("--gpus-per-trial", type=float, help="GPUs of one trial (0.25 packs four small trials on a GPU). "
                                                  "[default: as many trials a GPU as its memory holds]")
@click.option("--match-params", is_flag=True, default=None,
              help="Size every arm's MLP so its parameter count is within 2% of the reference arm's.")
@click.option("--reference-arm", help="The arm --match-params matches. [default: the one without attention]")
@click.option("--eval-task", "eval_tasks", multiple=True,
              help="Score every finished trial on this task too (arc_easy, arc_challenge, hellaswag, lambada).")
@click.option("--eval-data", help="The --eval-task's data when the Hugging Face hub is out of reach.")
@click.option("--keep-checkpoints", is_flag=True, default=None,
              help="Ended trials keep all their checkpoints with optimizer state (resumable, --extend-steps). "
                   "[default: model/ and the newest checkpoint's weights only]")
@click.option("--tune-lr", is_flag=True, default=None,
              help="Each arm at its own best learning rate: stage 1 searches it (one seed, ASHA within each arm, the "
                   "grid extended once past an edge), stage 2 trains every arm at its choice with --seeds, FIFO; then "
                   "report.md. Not with --grid lr.")
@click.option("--lr-grid", metavar="LR1,LR2,...", help="With --tune-lr: the learning rates stage 1 tries for every arm. "
              "[default: 7 values, x1/4 ... x4 each arm's own LR]")
@click.option("--tune-steps", type=int, help="With --tune-lr: stage 1's steps a trial. [default: the full run]")
@click.option("--dry-run", is_flag=True, help="Print the plan (arms, GPU memory against the GPU share, trials at once, "
              "disk, kernel shapes) and exit, training and tokenizing nothing.")
@click.option("--assume-gpus", type=int, help="With --dry-run: plan for a cluster of this many GPUs (16 CPUs a GPU). "
              "[default: this machine, or the cluster at --address]")
@click.option("--assume-gpu-memory", type=float, metavar="GB", help="With --dry-run: memory of each GPU, in GB.")
@click.option("--assume-free-disk", type=float, metavar="GB", help="With --dry-run: free space of the storage path.")
def sweep(address: str | None, verbose: bool, dry_run: bool, assume_gpus: int | None, assume_gpu_memory: float | None,
          assume_free_disk: float | None, **options: Any) -> None:
    """Sweep a grid of arms with Ray Tune (ASHA by default); --name names the sweep, relaunching it resumes it.

    With --config of a sweep job file (jobs/*.yaml), its grid and settings apply unless flags give others.
    """
    from hybrid_ray.sweep.options import SweepOptions, sweep_options
    from hybrid_ray.sweep.plan import Assumed
    from hybrid_ray.sweep.tuner import sweep as run_sweep

    assumed = {"gpus": assume_gpus, "gpu_memory_gb": assume_gpu_memory, "free_disk_gb": assume_free_disk}
    if not dry_run and any(v is not None for v in assumed.values()):
        raise SpecError("--assume-gpus, --assume-gpu-memory and --assume-free-disk go with --dry-run")
    flags = {f.name: options.pop(f.name) for f in dataclasses.fields(SweepOptions) if f.name in options}
    chosen = sweep_options(build.load(options["config"]).sweep if options.get("config") else {}, flags)
    spec = sweep_base(**options, grid=chosen.grid)
    if dry_run and chosen.tune_lr:
        from hybrid_ray.sweep.study import dry_run as plan_study

        plan_study(spec, chosen, address=address, assume=Assumed(**assumed))
        return
    if dry_run:
        from hybrid_ray.sweep.plan import dry_run as plan_only

        plan_only(spec, chosen, address=address, assume=Assumed(**assumed))
        return
    _quiet(verbose)
    if chosen.tune_lr:
        from hybrid_ray.sweep.study import tune_lr

        study = tune_lr(spec, chosen, address=address, verbose=verbose, relaunch=shlex.join(["hybrid-ray", *_ARGV]))
        click.echo(study.comparison.table)
        click.echo(f"results: {study.study_dir} (report: {study.report})")
        return
    outcome = run_sweep(spec, chosen, address=address, verbose=verbose, relaunch=shlex.join(["hybrid-ray", *_ARGV]))
    click.echo(outcome.table)
    click.echo(f"results: {outcome.sweep_dir}" + (f" (figure: {outcome.figure})" if outcome.figure else ""))


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--out", help="Folder for comparison.json and comparison.png. [default: comparison/ beside the compared "
                            "runs: in the sweep folder when one sweep is compared, else in their storage path]")
def compare(paths: tuple[str, ...], out: str | None) -> None:
    """Rank finished runs and sweeps (run folders, sweep folders, folders of runs) in one table and figure."""
    from hybrid_ray.records.report import compare as compare_runs

    done = compare_runs(list(paths), out)
    click.echo(done.table)
    click.echo(f"results: {done.folder}" + (f" (figure: {done.figure})" if done.figure else ""))


JOB_ADDRESS = click.option("--address", help="The cluster's dashboard, e.g. http://127.0.0.1:8265. [default: "
                           "$RAY_API_SERVER_ADDRESS, an http $RAY_ADDRESS, else http://127.0.0.1:8265]")


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@JOB_ADDRESS
@click.option("--fla", "fla_clone", type=click.Path(), help="A local FLA clone every worker imports instead of the "
              "installed FLA (shipped as py_modules); checked against the twin here first (on a CPU: only the forward "
              "through the fused-recurrent kernels).")
@click.option("--no-check", is_flag=True, help="Skip the check of --fla's clone.")
@click.option("--no-wait", is_flag=True, help="Return once the job is submitted instead of streaming its logs.")
@click.option("--dry-run", is_flag=True, help="List what would be uploaded and exit.")
@click.option("--working-dir", help="The project folder to upload. [default: the job file's working_dir, else .]")
@click.option("--exclude", "excludes", multiple=True, help="More upload exclusions (gitignore syntax).")
@click.option("--verbose", is_flag=True, help="Show Ray's own log lines and warnings.")
@click.argument("what", nargs=-1, type=click.UNPROCESSED, required=True)
def submit(address: str | None, fla_clone: str | None, no_check: bool, no_wait: bool, dry_run: bool,
           working_dir: str | None, excludes: tuple[str, ...], verbose: bool, what: tuple[str, ...]) -> int:
    """Run `hybrid-ray train|sweep ...` (after --) or a job file (jobs/NAME.yaml) as a Ray job on a cluster."""
    from hybrid_ray.jobs import submit

    _quiet_jobs(verbose)
    job = submit.plan(list(what), fla=fla_clone, working_dir=working_dir, excludes=list(excludes))
    _parse_forwarded(job.args)
    outcome = submit.submit(job, address=address, wait=not no_wait, dry_run=dry_run, echo=click.echo, verbose=verbose,
                            check_clone=not no_check)
    if outcome.status is not None:
        ran = ("" if not outcome.python or outcome.status == "SUCCEEDED" else
               "; there is no `python` on the head's PATH" if outcome.python == "none" else
               f"; it ran {outcome.python}, the first `python` on the head's PATH")
        click.echo(f"job {outcome.job_id}: {outcome.status} ({submit.job_url(outcome.dashboard, outcome.job_id)}){ran}")
        return 0 if outcome.status == "SUCCEEDED" else 1
    return 0


def _quiet_jobs(verbose: bool) -> None:
    """_quiet for the job commands: Ray's job SDK pins its loggers at INFO when imported, so import it first."""
    if not verbose:
        import ray.job_submission  # noqa: F401

        for name in [n for n in logging.root.manager.loggerDict if n.startswith("ray.")]:
            logging.getLogger(name).setLevel(logging.ERROR)
    _quiet(verbose)


def _parse_forwarded(args: list[str]) -> None:
    """Parse the command a job will run with its real click command (without running it): a wrong option fails here,
    before anything is uploaded."""
    command = cli.commands[args[0]]
    try:
        command.make_context(f"hybrid-ray {args[0]}", list(args[1:]))
    except click.exceptions.Exit:
        return
    except click.ClickException as e:
        raise SpecError(f"hybrid-ray {args[0]}: {e.format_message()} (nothing was submitted)") from e


@cli.group("jobs")
@JOB_ADDRESS
@click.pass_context
def jobs_group(ctx: click.Context, address: str | None) -> None:
    """List, inspect, follow and stop Ray jobs (each line gives the job's dashboard URL).

    --address goes before or after the sub-command (`jobs --address URL list`, as `submit --address URL`)."""
    _quiet_jobs(False)
    ctx.obj = address


def _job_address(address: str | None) -> str | None:
    """The --address of `jobs` or of its sub-command (both, naming two clusters: refused)."""
    group = click.get_current_context().parent.obj
    if address and group and address != group:
        raise SpecError(f"two --address values, {group} and {address}: give one")
    return address or group


@jobs_group.command("list")
@JOB_ADDRESS
@click.option("--json", "as_json", is_flag=True)
def jobs_list(address: str | None, as_json: bool) -> None:
    """Every job the cluster knows, oldest first."""
    from hybrid_ray.jobs import submit

    address = _job_address(address)
    rows = submit.list_jobs(address)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(f"{r['job_id']:<34}{r['status']:<11}{r['url']}  {r['entrypoint']}")


@jobs_group.command("status")
@JOB_ADDRESS
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Everything the job server knows of it, metadata included.")
def jobs_status(address: str | None, job_id: str, as_json: bool) -> None:
    """A job's status and message."""
    from hybrid_ray.jobs import submit

    address = _job_address(address)
    info = submit.status(job_id, address)
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    click.echo(f"{job_id}: {info['status']} ({info['url']})" + (f": {info['message']}" if info["message"] else ""))


@jobs_group.command("logs")
@JOB_ADDRESS
@click.argument("job_id")
@click.option("--follow", is_flag=True, help="Stream until the job ends.")
def jobs_logs(address: str | None, job_id: str, follow: bool) -> None:
    """A job's logs."""
    from hybrid_ray.jobs import submit

    address = _job_address(address)
    final = submit.logs(job_id, address, follow_logs=follow, echo=click.echo)
    click.echo(f"{job_id}: {final or submit.status(job_id, address)['status']} "
               f"({submit.job_url(submit.dashboard_address(address), job_id)})")


@jobs_group.command("stop")
@JOB_ADDRESS
@click.argument("job_id")
def jobs_stop(address: str | None, job_id: str) -> None:
    """Stop a running job."""
    from hybrid_ray.jobs import submit

    address = _job_address(address)
    click.echo(f"{job_id}: {submit.stop(job_id, address)} ({submit.job_url(submit.dashboard_address(address), job_id)})")


@cli.group()
def data() -> None:
    """Prepare and inspect token shards."""


@data.command("prepare")
@SPEC_OPTIONS
@click.option("--verify", "verify_shards", is_flag=True, help="Also check every shard's checksum.")
def data_prepare(verify_shards: bool, **options: Any) -> None:
    """Tokenize a corpus once into cached shards (what `train` would use)."""
    from hybrid_ray import data as data_lib

    spec = build_spec(**options)
    dataset = data_lib.prepare(spec.data, progress=True)
    if verify_shards:
        dataset.verify()
    click.echo(data_lib.describe(dataset))
    if verify_shards:
        click.echo("checksums: ok")


@data.command("inspect")
@SPEC_OPTIONS
@click.option("--samples", type=int, default=2, show_default=True, help="Validation documents to print.")
@click.option("--chars", type=int, default=300, show_default=True, help="Characters of each sample.")
def data_inspect(samples: int, chars: int, **options: Any) -> None:
    """Describe a prepared dataset and print the start of a few validation documents."""
    from hybrid_ray import data as data_lib

    dataset = data_lib.prepare(build_spec(**options).data, progress=True)
    click.echo(data_lib.describe(dataset))
    for i, text in enumerate(dataset.sample_documents("val", samples)):
        click.echo(f"--- validation document {i + 1} ---\n{text[:chars]}")


@cli.command()
@click.option("--preset", help="Show the variants at this preset's size. [default: the H100 base size]")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def variants(preset: str | None, as_json: bool) -> None:
    """List the named variants: attention layers, hyper-parameters and parameter counts (at the reference vocabulary)."""
    from hybrid_ray.config.variants import variant_table

    rows = variant_table(preset)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    header = f"{'variant':<26}{'attn':>6}  {'attention layers':<32}{'params':>9}{'non-emb':>9}{'lr':>9}{'batch x seq':>13}{'steps':>7}"
    click.echo(header)
    for r in rows:
        layers = ",".join(map(str, r["attention_layers"])) or "-"
        shape = f"{r['batch_size']} x {r['seq_len']}"
        share = f"{r['attention_ratio'] * 100:>5.0f}%" + ("*" if r["share_differs"] else " ")
        click.echo(f"{r['name']:<26}{share}  {layers:<32}{r['params']['total'] / 1e6:>8.1f}M"
                   f"{r['params']['non_embedding'] / 1e6:>8.1f}M{r['lr']:>9.1e}{shape:>13}{r['steps']:>7}")
    if any(r["share_differs"] for r in rows):
        click.echo("* this depth cannot hold the variant's named share exactly")
    click.echo(f"parameters at the reference vocabulary of {rows[0]['vocab_size']:,} (the SmolLM tokenizer); "
               "a run's model follows its tokenizer unless --vocab-size pins it")


@cli.command()
@SPEC_OPTIONS
@TRAIN_OPTIONS
@click.option("--grid", "grid", multiple=True, help="Warm every distinct kernel shape of this sweep grid (as "
              "`sweep --grid`; repeatable).")
@click.option("--match-params", is_flag=True, help="With --grid: size the arms as `sweep --match-params` does.")
def warmup(grid: tuple[str, ...], match_params: bool, **options: Any) -> None:
    """Compile and tune every FLA kernel a run needs (train step, evaluation, decoding) on this node's GPUs, into
    the node's kernel cache; with --storage-path, also publish them there for a cluster's other nodes.

    Takes the flags `train` takes (the shapes come from them: give the same ones); with --grid, those of a sweep."""
    from hybrid_ray.train.warmup import warmup as warm

    warm(build_spec(**options), storage_path=options["storage_path"], say=click.echo, grid=list(grid),
         match_params=match_params)


@cli.group("kernels")
def kernels_group() -> None:
    """This node's cache of compiled FLA/Triton kernels ($HYBRID_RAY_CACHE/kernels, one folder per software stack).

    Every GPU command reads and fills it; `export`/`import` carry it in a container image or a job's runtime_env.
    """


@kernels_group.command("list")
@click.option("--json", "as_json", is_flag=True)
def kernels_list(as_json: bool) -> None:
    """Every stack's cache on this node: entries, size, newest entry (* marks this node's stack)."""
    from hybrid_ray.node import kernels

    rows = kernels.list_caches()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    here = kernels.stack_key(kernels.probe())
    if not rows:
        click.echo(f"no kernels cached in {kernels.root()}")
    for r in rows:
        click.echo(f"{'*' if r['key'] == here else ' '} {r['key']:<60} {r['entries']:>6} entries "
                   f"{r['bytes'] / 2**20:8.1f} MiB  newest {r['newest'] or '-'}")


@kernels_group.command("export")
@click.argument("file", type=click.Path(dir_okay=False))
def kernels_export(file: str) -> None:
    """Write this stack's cache to FILE (.tar.xz, with a manifest naming the stack)."""
    from hybrid_ray.node import kernels

    manifest = kernels.export(file)
    click.echo(f"exported {manifest['entries']} entries for {manifest['key']} to {file}")


@kernels_group.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--key", help="The stack of a plain Triton cache tarball (no manifest). [default: this node's]")
@click.option("--force", is_flag=True, help="Install another stack's archive (under its own key) anyway.")
def kernels_import(file: str, key: str | None, force: bool) -> None:
    """Add FILE's entries (an export, or a tarball of a Triton cache folder) to this node's cache."""
    from hybrid_ray.node import kernels

    key, added = kernels.import_(file, key=key, force=force)
    click.echo(f"imported {added} new entries for {key} into {kernels.root() / key}")


@kernels_group.command("clear")
@click.option("--all", "all_stacks", is_flag=True, help="Every stack's cache, not only this node's stack.")
def kernels_clear(all_stacks: bool) -> None:
    """Remove this stack's cached kernels (the next GPU command compiles them again)."""
    from hybrid_ray.node import kernels

    removed = kernels.clear(all_stacks)
    click.echo(f"removed {', '.join(removed)}" if removed else "nothing cached to remove")


@cli.command()
@click.option("--require-gpu", is_flag=True, help="Also fail when there is no GPU at all.")
@click.option("--fla", "fla_clone", type=click.Path(), help="Check this FLA clone against the pure-PyTorch twin "
              "(forward and gradients on a GPU; the forward under Triton's interpreter on a CPU).")
@click.option("--json", "as_json", is_flag=True)
def verify(require_gpu: bool, fla_clone: str | None, as_json: bool) -> int:
    """Versions (hybrid-ray's commit too), FLA's origin, GPUs, attention kernel; non-zero when GPU training cannot
    work, or when --fla's clone does not match the twin."""
    from hybrid_ray.model import stack

    if fla_clone:
        from hybrid_ray.jobs.fla_clone import format_report, verify

        report = verify(fla_clone)
        click.echo(json.dumps(report, indent=2) if as_json else format_report(report))
        if not report["passed"]:
            click.echo(f"error: the FLA in {fla_clone} does not match the twin: {report['failures'][0]}", err=True)
            return 1
        return 0
    info = stack.collect()
    click.echo(json.dumps(info, indent=2) if as_json else stack.format_report(info))
    if info["problems"] or (require_gpu and not info["gpus"]):
        reason = info["problems"][0] if info["problems"] else "no CUDA GPU on this machine"
        click.echo(f"error: GPU training cannot work here: {reason}", err=True)
        return 1
    return 0


@cli.command()
@click.argument("path")
@click.option("--prompt", "prompts", multiple=True, help="Text to continue; repeat for several prompts at once.")
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), help="A file of prompts, one per line.")
@click.option("--max-new-tokens", type=int, default=100, show_default=True)
@click.option("--temperature", type=float, default=0.8, show_default=True, help="0 = greedy.")
@click.option("--top-k", type=int, default=50, show_default=True, help="0 = no limit.")
@click.option("--top-p", type=float, default=1.0, show_default=True, help="Nucleus sampling; 1 = no limit.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--backend", type=click.Choice(["auto", "fla", "torch"]), default="auto", show_default=True,
              help="auto: the pure-PyTorch twin on any device (starts in seconds: no FLA import); fla: FLA's own "
                   "model and kernels (GPU).")
@click.option("--no-cache", is_flag=True, help="Recompute the whole prefix for every token (for comparisons).")
@click.option("--no-graph", is_flag=True, help="GPU: run the decode step op by op, not as a captured CUDA graph.")
@click.option("--compile", "compile_step", is_flag=True,
              help="torch.compile the decode step (faster per token; the compile takes tens of seconds).")
@click.option("--batch", type=int, default=1, show_default=True,
              help="Decode each prompt N times in one batch (batched throughput); prints the first copy's text.")
def generate(path: str, prompts: tuple[str, ...], prompts_file: str | None, backend: str, no_cache: bool,
             no_graph: bool, compile_step: bool, batch: int, **options: Any) -> None:
    """Continue prompts with the model of a run folder (or a model folder), streaming a single prompt's tokens."""
    from hybrid_ray.inference.generate import SamplingOptions, read_prompts
    from hybrid_ray.inference.generate import generate as generate_text
    from hybrid_ray.startup import Startup, command_started

    startup = Startup(started=command_started())  # the command's imports so far (torch, the library) count as imports

    texts = [*prompts, *(read_prompts(prompts_file) if prompts_file else [])] or [""]
    sampling = SamplingOptions(use_cache=not no_cache, use_graph=not no_graph, compile=compile_step, **options)
    stream = len(texts) == 1 and batch == 1
    result = generate_text(path, texts, sampling, backend=backend, batch=batch, startup=startup,
                           on_text=(lambda _, text: click.echo(text, nl=False)) if stream else None,
                           on_loaded=(lambda: click.echo(texts[0], nl=False)) if stream else None)
    if stream:
        click.echo()
    else:
        for prompt, completion in list(zip(result.prompts, result.completions))[::batch]:
            click.echo(f"{prompt}{completion}\n---")
    click.echo(startup.line(), err=True)  # where the start-up went; the speed line stays the last one
    mode = ", no cache" if no_cache else ", no graph" if no_graph else ""
    click.echo(f"{sum(result.new_tokens)} tokens in {result.seconds:.2f} s ({result.tokens_per_s:.1f} tokens/s"
               f"{mode}{f', batch {len(result.prompts)}' if len(result.prompts) > 1 else ''}); "
               f"first token after {result.first_token_s:.3f} s, then {result.decode_tokens_per_s:.1f} tokens/s; "
               f"model loaded in {_seconds(result.load_s)}", err=True)


def _seconds(seconds: float) -> str:
    """A duration to print: milliseconds below a second (a CPU loads the tiny model in tens of them), else seconds."""
    from hybrid_ray.startup import seconds_text

    return seconds_text(seconds)


@cli.command("eval")
@click.argument("path")
@click.option("--task", required=True,
              help="arc_easy | arc_challenge | hellaswag | lambada | perplexity | recall (the recall probes, README)")
@click.option("--data", help="Task data: a JSON/JSONL/parquet file or folder in the Hugging Face hub's layout or as the "
                             "task's authors distribute it (AI2's ARC-*.jsonl, Rowan's hellaswag_*.jsonl) [default: the "
                             "Hugging Face hub]; for perplexity, any data source (file, folder, glob, stdlib, hf:...).")
@click.option("--limit", type=int, help="Score only the first N examples.")
@click.option("--seq-len", type=int, help="Perplexity: tokens per block. [default: the run's]")
@click.option("--backend", type=click.Choice(["auto", "fla", "torch"]), default="auto", show_default=True,
              help="auto: the pure-PyTorch twin on any device (starts in seconds: no FLA import); fla: FLA's own "
                   "model and kernels (GPU).")
@click.option("--address", help="Run on a worker of this Ray cluster (a GPU one when there is one); PATH must be on "
                                "storage its workers reach.")
def eval_command(path: str, task: str, data: str | None, limit: int | None, seq_len: int | None, backend: str,
                 address: str | None) -> None:
    """Score a run's model on a downstream task; the result goes into the run's eval/ folder and results.json."""
    from hybrid_ray.evals import downstream
    from hybrid_ray.startup import Startup, command_started

    startup = Startup(started=command_started())  # the command's imports so far count as imports

    if address:
        (result,) = downstream.evaluate_on_cluster([path], task, address=address, data=data, limit=limit, seq_len=seq_len)
        startup = None  # loaded on a worker of the cluster: no start-up of this process to tell
    else:
        result = downstream.evaluate_task(path, task, data=data, limit=limit, backend=backend, seq_len=seq_len,
                                     startup=startup)
    if task == "recall":
        for name, r in result["settings"].items():
            click.echo(f"  {name:<18} acc {r['accuracy']:.4f} ± {r['stderr']:.4f} ({r['examples']} examples)")
        click.echo(f"recall: score {result['score']:.4f} ± {result['score_stderr']:.4f} over "
                   f"{len(result['settings'])} settings in {result['seconds']:.2f} s")
    elif task == "perplexity":
        click.echo(f"perplexity {result['perplexity']:.3f} (loss {result['loss']:.4f}) over {result['tokens']:,} tokens "
                   f"of {result['data']}")
    else:
        line = f"{task}: acc {result['acc']:.4f} ± {result['acc_stderr']:.4f}"
        if "acc_norm" in result:
            line += f", acc_norm {result['acc_norm']:.4f} ± {result['acc_norm_stderr']:.4f}"
        if "perplexity" in result:
            line += f", perplexity {result['perplexity']:.2f}"
        click.echo(f"{line} ({result['examples']} examples) in {result['seconds']:.2f} s, "
                   f"{result['examples_per_s']:.1f} examples/s")
    if startup is not None:
        click.echo(startup.line(), err=True)


@cli.group()
def runs() -> None:
    """List and remove runs under a storage path."""


STORAGE_OPTION = click.option("--storage-path", default=DEFAULT_STORAGE, show_default=True,
                              help="Local folder or pyarrow URI.")


@runs.command("list")
@STORAGE_OPTION
@click.option("--json", "as_json", is_flag=True)
def runs_list(storage_path: str, as_json: bool) -> int:
    """Name, variant (or, for a run no variant names, its attention share and layers), status, step, best validation
    loss and path of every run; a damaged run is listed too, and an error line for it (exit code 1) says which file
    is damaged."""
    from hybrid_ray.records.folders import list_runs

    rows = list_runs(storage_path)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
    elif not rows:
        click.echo(f"no runs under {storage_path}")
    else:
        click.echo(f"{'name':<32}{'variant':<26}{'status':<24}{'step':>12}{'best val':>10}  path")
        for r in rows:
            step = f"{r.step if r.step is not None else '-'}/{r.total_steps or '-'}"
            best = f"{r.best_val_loss:.4f}" if r.best_val_loss is not None else "-"
            variant = r.variant or r.attention or "-"  # a ratio sweep's trial over shares: its layout
            state = f"diverged at step {r.diverged_at}" if r.diverged_at is not None else r.status
            click.echo(f"{r.name:<32}{variant:<26}{state:<24}{step:>12}{best:>10}  {r.path}")
    for r in rows:
        if r.problem:
            click.echo(f"error: {r.problem}", err=True)
    return 1 if any(r.problem for r in rows) else 0


@runs.command("rm")
@click.argument("name")
@STORAGE_OPTION
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def runs_rm(name: str, storage_path: str, yes: bool) -> None:
    """Delete a run: its checkpoints, results and model folder."""
    from hybrid_ray.records.folders import find_run, remove_run

    find_run(storage_path, name)  # a name that is no run is one line, before anything is asked
    if not yes:
        click.confirm(f"delete run {name!r} under {storage_path} with all its checkpoints?", abort=True)
    click.echo(f"removed {remove_run(storage_path, name)}")


def _quiet(verbose: bool) -> None:
    """Keep Ray's own log lines and warnings off the console unless --verbose (they go to Ray's log files)."""
    if verbose:
        return
    for name in ("ray", "ray.train", "ray.tune", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"ray(\.|$)")
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


_ARGV: list[str] = []  # this invocation's arguments, for the relaunch command an interrupted sweep prints


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors become one line on stderr and a non-zero exit code, never a traceback."""
    from hybrid_ray import startup

    startup.mark_command_start()
    warnings.formatwarning = _format_warning
    _ARGV[:] = sys.argv[1:] if argv is None else argv
    try:
        rv = cli.main(args=argv, prog_name="hybrid-ray", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as e:  # `hybrid-ray` or a group alone asks for its help, not an error
        click.echo(e.ctx.get_help())
        return 0
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        return e.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        return 130
    except HybridRayError as e:
        click.echo(f"error: {e}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
