"""The `hybrid-ray` command: a thin click layer over the library (every command is a library call)."""

from __future__ import annotations

import json
import sys
import warnings
from typing import Any

import click

from hybrid_ray.errors import HybridRayError, SpecError
from hybrid_ray.spec import RunSpec
from hybrid_ray.variants import DEFAULT_PRESET, DEFAULT_VARIANT, PRESETS, attention_layers, variant_spec

# CLI flag -> RunSpec dotted key. The CLI never interprets these itself: it only copies them into the spec.
SPEC_FLAGS: dict[str, str] = {
    "steps": "train.steps",
    "lr": "optim.lr",
    "batch_size": "train.batch_size",
    "micro_batch_size": "train.micro_batch_size",
    "seq_len": "data.seq_len",
    "data": "data.source",
    "tokenizer": "data.tokenizer",
    "max_documents": "data.max_documents",
    "packed": "data.packed",
    "num_workers": "scale.num_workers",
    "gpus_per_worker": "scale.gpus_per_worker",
    "cpus_per_worker": "scale.cpus_per_worker",
    "strategy": "scale.strategy",
    "backend": "scale.backend",
    "max_failures": "scale.max_failures",
    "compile": "train.compile",
    "eval_every": "train.eval_every",
    "log_every": "train.log_every",
    "checkpoint_every": "train.checkpoint_every",
    "keep": "train.keep",
    "storage_path": "storage_path",
    "name": "name",
    "seed": "train.seed",
}


def build_spec(
    config: str | None,
    variant: str | None,
    preset: str | None,
    attention_ratio: float | None = None,
    **flags: Any,
) -> RunSpec:
    """The run spec from --config or --variant/--preset, then the flags on top. No arguments: the tiny hybrid."""
    if config:
        if variant or preset:
            raise SpecError("--config already defines the run: drop --variant/--preset or the config file")
        spec = RunSpec.load(config)
    else:
        if variant is None and preset is None:
            preset = DEFAULT_PRESET
        spec = variant_spec(variant or DEFAULT_VARIANT, preset)
    overrides = {SPEC_FLAGS[k]: v for k, v in flags.items() if k in SPEC_FLAGS}
    if attention_ratio is not None:
        overrides["model.attn_layers"] = attention_layers(attention_ratio, spec.model.num_layers)
        if flags.get("name") is None:
            overrides["name"] = f"{spec.name}-attn{round(attention_ratio * 100)}"
    return spec.with_overrides(overrides)


def _spec_options(f):
    """The options that define a run (shared by train and data prepare)."""
    options = [
        click.option("--variant", help="Named variant (see `hybrid-ray variants`)."),
        click.option("--preset", help=f"Model size preset: {', '.join(PRESETS)}."),
        click.option("--config", "config", type=click.Path(dir_okay=False), help="YAML/JSON run spec (results.json works too)."),
        click.option("--attention-ratio", type=float, help="Replace the attention layers by this share (0..1)."),
        click.option("--data", help="stdlib | mqar[?k=v] | file/dir/glob | hf:NAME[:CONFIG][@SPLIT]."),
        click.option("--tokenizer", help="byte, or a Hugging Face tokenizer name or path."),
        click.option("--seq-len", type=int),
        click.option("--max-documents", type=int, help="Read at most this many documents."),
        click.option("--packed/--no-packed", default=None, help="Reset state at document boundaries (cu_seqlens)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="hybrid-ray")
def cli() -> None:
    """Train and compare hybrid Gated DeltaNet / attention language models on Ray."""


@cli.command()
@_spec_options
@click.option("--steps", type=int)
@click.option("--lr", type=float)
@click.option("--batch-size", type=int, help="Global batch (sequences per optimizer step).")
@click.option("--micro-batch-size", type=int, help="Per worker per forward (gradient accumulation).")
@click.option("--num-workers", type=int)
@click.option("--gpus-per-worker", type=float)
@click.option("--cpus-per-worker", type=float)
@click.option("--strategy", type=click.Choice(["auto", "ddp", "fsdp"]),
              help="Data parallelism: fsdp (FSDP2, bf16 compute params) on GPUs and ddp on CPUs by default.")
@click.option("--backend", type=click.Choice(["auto", "fla", "torch"]), help="Model backend.")
@click.option("--compile/--no-compile", default=None, help="torch.compile each block.")
@click.option("--max-failures", type=int, help="Worker-group restarts from the last checkpoint.")
@click.option("--eval-every", type=int)
@click.option("--log-every", type=int)
@click.option("--checkpoint-every", type=int)
@click.option("--keep", type=int, help="Checkpoints to keep.")
@click.option("--seed", type=int)
@click.option("--name", help="Run name (relaunching a name resumes it).")
@click.option("--storage-path", help="Local folder or pyarrow URI (s3://...).")
@click.option("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray).")
@click.option("--extend-steps", type=int, default=0, help="Train a (finished) run this many more steps.")
@click.option("--until-step", type=int, help="Stop this launch at this step, resumable.")
@click.option("--dry-run", is_flag=True, help="Print the resolved spec and exit.")
def train(address: str | None, extend_steps: int, until_step: int | None, dry_run: bool, **options: Any) -> None:
    """Train one variant with Ray Train (resumes when the run name exists)."""
    spec = build_spec(**options)
    if dry_run:
        click.echo(spec.to_yaml(), nl=False)
        return
    from hybrid_ray.train import train as train_run

    outcome = train_run(spec, address=address, extend_steps=extend_steps, until_step=until_step)
    r = outcome.results
    line = f"{r['status']} at step {r['step']}/{r['total_steps']}"
    if "final" in r:
        line += f": val_loss {r['final']['val_loss']:.4f} (best {r['best']['val_loss']:.4f} at step {r['best']['step']})"
    click.echo(line)
    click.echo(f"results: {outcome.run_dir}")


@cli.group()
def data() -> None:
    """Prepare and inspect token shards."""


@data.command("prepare")
@_spec_options
def data_prepare(**options: Any) -> None:
    """Tokenize a corpus once into cached shards (what `train` would use)."""
    from hybrid_ray import data as data_lib

    spec = build_spec(**options)
    dataset = data_lib.prepare(spec.data, progress=True)
    click.echo(data_lib.describe(dataset))


@cli.command()
@click.option("--preset", help="Show the variants at this preset's size.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def variants(preset: str | None, as_json: bool) -> None:
    """List the named variants with their attention layers, hyper-parameters and parameter counts."""
    from hybrid_ray.model import count_params
    from hybrid_ray.variants import VARIANTS

    rows = []
    for name, v in VARIANTS.items():
        spec = variant_spec(name, preset)
        params = count_params(spec.model) if spec.model.vocab_size else None
        rows.append({
            "name": name, "description": v.description, "attention_ratio": round(spec.model.attention_ratio, 4),
            "attention_layers": spec.model.attn_layers, "params": params, "lr": spec.optim.lr,
            "batch_size": spec.train.batch_size, "seq_len": spec.data.seq_len, "steps": spec.train.steps,
            "warmup_steps": spec.optim.warmup_steps,
        })
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    header = f"{'variant':<26}{'attn':>6}  {'attention layers':<32}{'params':>9}{'non-emb':>9}{'lr':>9}{'batch x seq':>13}{'steps':>7}"
    click.echo(header)
    for r in rows:
        total = f"{r['params']['total'] / 1e6:.1f}M" if r["params"] else "-"
        non_emb = f"{r['params']['non_embedding'] / 1e6:.1f}M" if r["params"] else "-"
        layers = ",".join(map(str, r["attention_layers"])) or "-"
        shape = f"{r['batch_size']} x {r['seq_len']}"
        click.echo(f"{r['name']:<26}{r['attention_ratio'] * 100:>5.0f}%  {layers:<32}{total:>9}{non_emb:>9}"
                   f"{r['lr']:>9.1e}{shape:>13}{r['steps']:>7}")


@cli.command()
@click.option("--require-gpu", is_flag=True, help="Also fail when there is no GPU at all.")
@click.option("--json", "as_json", is_flag=True)
def verify(require_gpu: bool, as_json: bool) -> int:
    """Versions, FLA's origin, GPUs, attention kernel; non-zero exit when GPU training cannot work."""
    from hybrid_ray.env import collect, format_report

    info = collect()
    click.echo(json.dumps(info, indent=2) if as_json else format_report(info))
    if info["problems"] or (require_gpu and not info["gpus"]):
        reason = info["problems"][0] if info["problems"] else "no CUDA GPU on this machine"
        click.echo(f"error: GPU training cannot work here: {reason}", err=True)
        return 1
    return 0


@cli.command()
@click.argument("path")
@click.option("--prompt", default="", help="Text to continue.")
@click.option("--max-new-tokens", type=int, default=100)
@click.option("--temperature", type=float, default=0.8, help="0 = greedy.")
@click.option("--top-k", type=int, default=50)
@click.option("--seed", type=int, default=0)
@click.option("--backend", type=click.Choice(["auto", "fla", "torch"]), default="auto")
def generate(path: str, prompt: str, **options: Any) -> None:
    """Continue a prompt with the model of a run folder (or a model folder)."""
    from hybrid_ray.generate import generate as generate_text

    click.echo(prompt + generate_text(path, prompt, **options))


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors become one line on stderr and a non-zero exit code, never a traceback."""
    warnings.formatwarning = _format_warning
    try:
        rv = cli.main(args=argv, prog_name="hybrid-ray", standalone_mode=False)
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
