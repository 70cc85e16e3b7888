"""`normlab train | diagnose | reproduce | demo | bench`: argument parsing only; the work lives in the modules below."""
from __future__ import annotations

import click

from . import data as _data, diagnostics as _diagnostics, fast as _fast, models as _models
from .config import MAX_SEED, TrainConfig

_D = TrainConfig()   # `normlab train`'s defaults are TrainConfig's: one home for each
# ...but for one deliberate difference: at the console, a loss row every 10 steps between evaluations (the library's
# default, 0, keeps experiment records small; changing it there would change every experiment's run hash)
CLI_LOG_EVERY = 10


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="normlab")
def main() -> None:
    """normlab: normalization layers, the instruments of the papers, and their reproduction."""


def _check_norm(ctx, param, value: str) -> str:
    """The spec's name here; its ':' argument is checked by the factory on the model's real layers (check_model)."""
    from .layers.factory import valid_specs
    if value.strip().lower().partition(":")[0] not in valid_specs():
        raise click.BadParameter(f"unknown norm {value!r}; valid: {', '.join(valid_specs())} (some take ':N', e.g. gn:8)")
    return value


def _check_only(ctx, param, values: tuple[str, ...]) -> tuple[str, ...]:
    ids = [v.strip() for item in values for v in item.split(",")]
    if any(not v for v in ids):
        raise click.BadParameter(f"empty experiment id in {list(values)}; give ids (see --list) or leave --only out "
                                 f"to run them all")
    return tuple(ids)


def _default_threads(jobs: int) -> int | None:
    """--threads default: OMP_NUM_THREADS when set (per worker), else None (cores // jobs in the runner)."""
    import os
    raw = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not raw:
        return None
    try:
        n = int(raw.split(",")[0])
    except ValueError:
        raise click.UsageError(f"OMP_NUM_THREADS={raw!r}: expected a positive integer") from None
    if n < 1:
        raise click.UsageError(f"OMP_NUM_THREADS={raw!r}: expected a positive integer")
    return n


def _check_positive(ctx, param, value: float) -> float:
    if not value > 0:
        raise click.BadParameter(f"expected a positive number, got {value}")
    return value


def _parse_kw(ctx, param, values: tuple[str, ...]) -> dict:
    import json
    out = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE (e.g. width=0.25), got {item!r}")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


@main.command()
@click.option("--model", type=click.Choice(_models.names()), default=_D.model, show_default=True)
@click.option("--norm", default=_D.norm, show_default=True, callback=_check_norm,
              help="Norm spec from the factory: none, bn, gn:8, ln, in, ... ")
@click.option("--dataset", type=click.Choice(_data.names()), default=_D.dataset, show_default=True)
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default=_D.optimizer, show_default=True)
@click.option("--lr", type=float, default=_D.lr, show_default=True, callback=_check_positive, help="Learning rate.")
@click.option("--momentum", type=click.FloatRange(min=0), default=_D.momentum, show_default=True, help="SGD momentum.")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=_D.weight_decay, show_default=True)
@click.option("--schedule", type=click.Choice(["constant", "step"]), default=_D.schedule, show_default=True)
@click.option("--milestones", default="", help="Step schedule: comma-separated steps where lr *= --gamma.")
@click.option("--gamma", type=click.FloatRange(min=0), default=_D.lr_gamma, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=_D.batch_size, show_default=True,
              help="Global batch size.")
@click.option("--steps", type=click.IntRange(min=0), default=_D.steps, show_default=True)
@click.option("--seed", type=click.IntRange(min=0, max=MAX_SEED), default=_D.seed, show_default=True)
@click.option("--eval-every", type=click.IntRange(min=0), default=_D.eval_every, show_default=True,
              help="Evaluate train/test accuracy every N steps (0: only at start and end).")
@click.option("--eval-samples", type=click.IntRange(min=0), default=_D.eval_samples, show_default=True,
              help="Size of the fixed train and test subsets used for accuracy (0: whole split).")
@click.option("--log-every", type=click.IntRange(min=0), default=CLI_LOG_EVERY, show_default=True,
              help="A metrics row (loss, mean loss, lr) every N steps between evaluations (0: only at evaluations).")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=_D.checkpoint_every, show_default=True,
              help="0: never.")
@click.option("--init", type=click.Choice(["default", "glorot", "ioffe", "gaussian"]), default=_D.init,
              show_default=True, help="Weight init scheme.")
@click.option("--model-kw", multiple=True, callback=_parse_kw, metavar="KEY=VALUE",
              help="Model keyword, e.g. width=0.25 or cfg=vgg13 (repeatable).")
@click.option("--loss", type=click.Choice(["auto", "ce", "mse"]), default=_D.loss, show_default=True)
@click.option("--augment", is_flag=True, default=_D.augment, help="Random flips and crops of training batches.")
@click.option("--deterministic", is_flag=True, default=_D.deterministic,
              help="torch.use_deterministic_algorithms for the run.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output dir [default: runs/MODEL-NORM-DATASET-sSEED].")
@click.option("--resume", is_flag=True,
              help="Continue from OUT/checkpoint.pt (--steps may grow; display, logging and checkpoint options may "
                   "change).")
@click.option("--overwrite", is_flag=True, help="Delete the run already in OUT and start over.")
@click.option("--device", default=_D.device, show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--nproc", type=click.IntRange(min=1), default=_D.nproc, show_default=True,
              help="Data-parallel processes (gloo on CPU, nccl on CUDA).")
@click.option("--sync-bn", is_flag=True, default=_D.sync_bn,
              help="With --nproc > 1: normlab SyncBatchNorm (global batch statistics).")
@click.option("--progress/--no-progress", default=_D.progress, show_default=True,
              help="A progress bar on a terminal; plain lines every 30 s when stderr is a file or pipe.")
@click.option("--tensorboard", is_flag=True,
              help="Also write the metrics as TensorBoard scalars to OUT/tensorboard (needs `pip install "
                   "tensorboard`).")
def train(**opts) -> None:
    """Train one model and write metrics.jsonl, checkpoints and summary.json into --out."""
    from pathlib import Path

    from .checkpoint import CheckpointError
    from .data import DataError
    from .records import InUseError, describe_os_error
    from .train import ConfigError, TrainConfig, check_model, train as run_train
    try:
        milestones = tuple(int(s) for s in opts.pop("milestones").split(",") if s.strip())
    except ValueError:
        raise click.BadParameter("expected comma-separated integers, e.g. 1000,2000", param_hint="--milestones")
    if opts["device"] not in ("auto", "cpu", "cuda") and not opts["device"].startswith("cuda:"):
        raise click.BadParameter(f"expected auto, cpu, cuda or cuda:N, got {opts['device']!r}", param_hint="--device")
    out = opts.pop("out") or f"runs/{opts['model']}-{opts['norm']}-{opts['dataset']}-s{opts['seed']}"
    resume, overwrite, tensorboard = opts.pop("resume"), opts.pop("overwrite"), opts.pop("tensorboard")
    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite contradict each other: pick one")
    if resume and not any((Path(out) / n).exists() for n in ("checkpoint.pt", "summary.json")):
        raise click.UsageError(f"--resume: {out} has no checkpoint.pt to continue from; drop --resume to start "
                               f"the run")
    cfg = TrainConfig(lr_milestones=milestones, lr_gamma=opts.pop("gamma"), model_kw=opts.pop("model_kw"), **opts)
    try:   # every value checked by the code that will use it, before any data loads
        for note in check_model(cfg.validate()):
            click.echo(f"note: {note}", err=True)
    except ConfigError as e:
        raise click.UsageError(str(e))
    _fast.prepare()   # the fast kernels built (or loaded) now, never inside a training step
    try:
        summary = run_train(cfg, out, resume=resume, overwrite=overwrite, tensorboard=tensorboard)
    except (ConfigError, DataError, CheckpointError) as e:
        raise click.UsageError(str(e))
    except InUseError as e:
        raise click.ClickException(str(e))
    except OSError as e:
        raise click.ClickException(describe_os_error(e))
    except KeyboardInterrupt:
        raise SystemExit(_interrupted(out)) from None
    final = summary["final"]
    msg = (f"{summary['status']}" + (f" (diverged at step {summary['diverged_at']})" if summary["diverged_at"] is not None
                                     else "") + f": {summary['steps_done']} steps in {summary['wall_time_s']:.1f} s")
    if final.get("test_acc") is not None:
        msg += f", train acc {final['train_acc']:.4f}, test acc {final['test_acc']:.4f}"
    click.echo(f"{msg}; peak RSS {summary['peak_rss_mb']:.0f} MB; results in {out}")


def _interrupted(out: str) -> int:
    """Ctrl-C during `normlab train`: say what was kept and how to go on; returns the exit status (130)."""
    from pathlib import Path

    from .checkpoint import CheckpointError, load_checkpoint
    try:
        step = load_checkpoint(Path(out) / "checkpoint.pt")["step"]
    except (OSError, CheckpointError):
        step = None
    if step is None:
        click.echo(f"\ninterrupted before the first checkpoint: nothing to resume; rerun with --overwrite to start "
                   f"over (or a smaller --checkpoint-every)", err=True)
    else:
        click.echo(f"\ninterrupted: {out} keeps the checkpoint at step {step}; rerun the same command with --resume "
                   f"to continue from there", err=True)
    return 130


def _floats(ctx, param, value: str) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected two numbers A,B, got {value!r}")
    return a, b


@main.command()
@click.argument("checkpoint", type=click.Path(exists=True))
@click.option("--what", default="all", show_default=True,
              help=f"Comma-separated: {', '.join(_diagnostics.diagnosable())} (or all).")
@click.option("--data", "data_root", type=click.Path(file_okay=False), default=None,
              help="Data dir [the run's data_root, else $NORMLAB_DATA].")
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=None, help="[the run's batch size]")
@click.option("--batch-seed", type=int, default=0, show_default=True, help="Seed of the random batch.")
@click.option("--layers", default=None, help="Weight-layer indices or module names, comma-separated [all].")
@click.option("--lr", type=float, default=None, help="Step size eta for the landscape [the run's lr at the step].")
@click.option("--span", default="0.5,4", show_default=True, callback=_floats,
              help="Landscape multipliers s from A*lr to B*lr (deep linear net: 0.01,30 with --spacing log).")
@click.option("--points", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--spacing", type=click.Choice(["linear", "log"]), default="linear", show_default=True)
@click.option("--bn-mode", type=click.Choice(["train", "eval"]), default="train", show_default=True,
              help="BN at landscape/Hessian probes: batch statistics (buffers untouched) or running statistics.")
@click.option("--iters", type=click.IntRange(min=1), default=20, show_default=True, help="Power iterations.")
@click.option("--trace-samples", type=click.IntRange(min=0), default=0, show_default=True, help="Hutchinson.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="JSON file [CHECKPOINT dir/diagnose.json].")
def diagnose(checkpoint: str, what: str, data_root: str | None, split: str, batch_size: int | None,
             batch_seed: int, layers: str | None, lr: float | None, out: str | None, **opts) -> None:
    """Run the instruments (docs/diagnostics.md) on a training checkpoint and one batch; print a table, write JSON."""
    from pathlib import Path

    import torch

    from .checkpoint import load_checkpoint, write_json_atomic
    from .train import TrainConfig, loss_fn_for, lr_at, make_optimizer
    path = Path(checkpoint) / "checkpoint.pt" if Path(checkpoint).is_dir() else Path(checkpoint)
    try:
        names = _diagnostics.parse_what(what)
        state = load_checkpoint(path)
        cfg = TrainConfig.from_dict(state["config"])
        seed = cfg.seed if cfg.dataset == "synthetic-linear" else 0   # as train() loads it
        ds = _data.load(cfg.dataset, root=data_root or cfg.data_root, seed=seed)
        _fast.prepare()
        model = _models.build(cfg.model, cfg.norm, ds.in_shape, ds.num_classes, cfg.init, **dict(cfg.model_kw))
        model.load_state_dict(state["model"])
        opt = make_optimizer(cfg, model.parameters())
        opt.load_state_dict(state["optimizer"])
        loss_fn, _ = loss_fn_for(cfg, ds)
        xs, ys = (ds.x_train, ds.y_train) if split == "train" else (ds.x_test, ds.y_test)
        n = min(batch_size or cfg.batch_size, len(xs))
        idx = torch.randperm(len(xs), generator=torch.Generator().manual_seed(batch_seed))[:n]
        lr = lr if lr is not None else lr_at(cfg, int(state["step"]))
        sel = None if layers is None else [int(v) if v.strip().lstrip("-").isdigit() else v.strip()
                                           for v in layers.split(",")]
        results = _diagnostics.diagnose(model.train(), loss_fn, xs[idx], ys[idx], names, opt, lr, sel, **opts)
    except (ValueError, TypeError, KeyError, OSError) as e:
        raise click.UsageError(f"diagnose: {e}") from e
    click.echo(f"{path} (step {state['step']}, {cfg.model}/{cfg.norm}/{ds.name}), {split} batch of {n}, lr {lr:g}")
    click.echo(_diagnostics.format_table(results))
    dest = Path(out) if out else path.parent / "diagnose.json"
    write_json_atomic(dest, {"checkpoint": str(path), "step": state["step"], "config": cfg.to_dict(), "split": split,
                             "batch_size": n, "batch_seed": batch_seed, "lr": lr, "options": opts,
                             "results": results})
    click.echo(f"wrote {dest}")


@main.command()
@click.option("--scale", type=click.Choice(["quick", "paper", "smoke"]), default="quick", show_default=True,
              help="quick: minutes on a 2-core CPU; paper: the papers' setups (GPU); smoke: seconds, for tests.")
@click.option("--only", multiple=True, metavar="ID", callback=_check_only,
              help="Experiment id(s) to run (repeat or comma-separate).")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Output folder [out/reproduce-SCALE].")
@click.option("--seeds", type=click.IntRange(min=1), default=None,
              help="Seeds per variant [each experiment's own: 3, or 5 where stated in its module].")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--jobs", type=click.IntRange(min=1), default=2, show_default=True,
              help="Worker processes (each with cores/jobs torch threads).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch threads per worker [$OMP_NUM_THREADS if set, else cores // jobs].")
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: --jobs worker processes here; ray: one Ray task per run with --threads CPUs (+1 GPU on "
                   "cuda) on the Ray cluster (RAY_ADDRESS) or a local one; needs pip install 'normlab[ray]'.")
@click.option("--list", "list_", is_flag=True, help="List the experiment ids and exit.")
def reproduce(scale: str, only: tuple[str, ...], out: str | None, seeds: int | None, device: str, jobs: int,
              threads: int | None, backend: str, list_: bool) -> None:
    """Reproduce the papers' experiments: runs (cached by config hash, resumable), figures, verdicts, report."""
    from . import experiments as ex
    if list_:
        for i in ex.ids():
            e = ex.get(i)
            click.echo(f"{i:22s} {e.source}")
        return
    _reproduce(ex, scale, only, out or f"out/reproduce-{scale}", seeds, device, jobs,
               threads or _default_threads(jobs), backend)


def _reproduce(ex, scale: str, only, out: str, seeds: int | None, device: str, jobs: int,
               threads: int | None = None, backend: str = "local") -> None:
    from .records import InUseError, describe_os_error
    _fast.prepare()   # built once here, before the workers start (each loads the cached build)
    try:
        chosen = ex.resolve(list(only))
        res = ex.reproduce(chosen, scale=scale, out=out, seeds=seeds, device=device, jobs=jobs, threads=threads,
                           backend=backend)
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    except InUseError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(describe_os_error(e)) from None
    except KeyboardInterrupt:
        raise SystemExit(130)
    click.echo("\n" + ex.verdict_table(out))
    click.echo(f"\n{res['runs']} runs ({res['reused']} reused) in {res['wall_s'] / 60:.1f} min")
    click.echo(f"report: {res['report']}\n        {res['report_md']}")
    if res["failed"]:
        raise click.ClickException(f"failed runs in: {', '.join(res['failed'])} (see error.txt in their run folders)")


@main.command()
@click.argument("a", type=click.Path(file_okay=False, exists=True))
@click.argument("b", type=click.Path(file_okay=False, exists=True))
def compare(a: str, b: str) -> None:
    """Verdicts of two reproductions (A and B: --out folders of `normlab reproduce`) part by part; exits 1 when any
    headline or part differs, e.g. the fast path against NORMLAB_FAST=0."""
    from .report import compare as _compare, format_compare
    try:
        rows = _compare(a, b)
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise click.UsageError(f"compare: {e}") from e
    click.echo(format_compare(rows))
    if not all(r["same"] for r in rows):
        raise SystemExit(1)


@main.command()
@click.option("--out", type=click.Path(file_okay=False), default="out/demo", show_default=True)
@click.option("--jobs", type=click.IntRange(min=1), default=2, show_default=True)
def demo(out: str, jobs: int) -> None:
    """The main job on offline data (make demo): quick reproduction of a representative subset, then the report."""
    from . import experiments as ex
    _reproduce(ex, "quick", ex.DEMO, out, None, "cpu", jobs, _default_threads(jobs))


if __name__ == "__main__":
    main()
