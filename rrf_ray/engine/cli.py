"""`python -m rrf_ray.sweep NAME|PATH`: run any registered experiment's sweep on Ray.

The YAML's `experiment:` key picks the experiment (engine.registry); its runner does the
stages, each idempotent (content-addressed artifacts under the sweep's storage), so
`--resume` reuses every finished artifact and trial, and may grow a sweep by the spec fields
its experiment declares growable (more seeds, say): only the new trials run. One driver at a
time per storage (engine.lock). SIGINT or SIGTERM stops the sweep resumably and prints the
command that resumes it (engine.stopping); exit 130 or 143. `--dry-run` prints the stages,
trials and resource needs and runs nothing. A bad spec, a bad argument, a missing input or
a storage in use prints one error line and exits 2. `--mlflow URI` and `--wandb [PROJECT]` log
every stage's trials (config and metrics) to MLflow and/or W&B as well (engine.tracking,
docs/tracking.md): `pip install 'rrf_ray[tracking]'` for MLflow, `pip install wandb` for W&B.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Callable

from rrf_ray.engine.loading import list_sweeps, load_spec
from rrf_ray.engine.lock import LOCK_FILE, StorageLock
# Before anything imports Ray: Ray reads its log-deduplication settings once, at its import (engine.ray_runtime).
from rrf_ray.engine.ray_runtime import note, print_notes, set_verbose
from rrf_ray.engine.registry import Experiment, default_experiment, get_experiment
from rrf_ray.engine.spec import ConfigError, compare_specs, exit_on_user_error
from rrf_ray.engine.stopping import catch_stop_signals, exit_on_next_signal, finish_stop, stopped_by
from rrf_ray.engine.storage import SweepStorage


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rrf_ray.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", nargs="?", help="a sweep's name (--list names them: ./sweeps/NAME.yaml, else the "
                   "package's) or a YAML path")
    p.add_argument("--list", action="store_true", help="name every sweep spec, one line each, and exit")
    p.add_argument("--storage", default="results",
                   help="where sweeps live, one per name: a directory (default ./results; shared by every node "
                        "on a cluster) or a URI pyarrow opens (s3://bucket/path, gs://...)")
    p.add_argument("--resume", action="store_true",
                   help="continue a sweep in its storage directory (its spec, or the same with more of what its "
                        "experiment lets grow, e.g. --set seeds=[0,1])")
    p.add_argument("--dry-run", action="store_true", help="print stages, trials and resource needs; run nothing")
    p.add_argument("--address", default=None, help="Ray cluster to join (default: RAY_ADDRESS, else one `ray start` started on this machine, else a private local Ray for this sweep)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--verbose", action="store_true",
                   help="Ray's own messages on the console too (its warnings, every worker's output); "
                        "by default they stay in Ray's log directory, named in the first lines")
    track = p.add_argument_group("experiment tracking (docs/tracking.md; none by default)")
    track.add_argument("--mlflow", default=None, metavar="TRACKING_URI",
                       help="log every stage's trials (config, metrics) to MLflow at this tracking URI: a local "
                            "store (sqlite:///PATH.db; file:PATH with MLFLOW_ALLOW_FILE_STORE=true on MLflow 3) or "
                            "a server (http://HOST:5000); one run per trial, in the experiment named after the "
                            "sweep, tagged rrf_ray.stage. Needs pip install 'rrf_ray[tracking]'")
    track.add_argument("--mlflow-experiment", default=None, metavar="NAME",
                       help="the MLflow experiment for --mlflow (default: the sweep's name)")
    track.add_argument("--wandb", nargs="?", const="", default=None, metavar="PROJECT",
                       help="log every stage's trials to Weights & Biases, in PROJECT (default: the sweep's name), "
                            "one run per trial grouped as SWEEP/STAGE; the API key as W&B finds it (WANDB_API_KEY, "
                            "wandb login); WANDB_MODE=offline logs without network. Needs pip install wandb")
    return p


def configure_tracking(args: argparse.Namespace) -> None:
    """This driver's stages tracked as --mlflow/--wandb say (engine.tracking); ConfigError if a package
    they need is missing. Without them neither Ray nor a tracking package is imported here."""
    if args.mlflow_experiment is not None and args.mlflow is None:
        raise ConfigError("--mlflow-experiment needs --mlflow")
    if args.mlflow is None and args.wandb is None:
        tracking = sys.modules.get("rrf_ray.engine.tracking")
        if tracking is not None:  # an earlier main() in this process may have turned it on
            tracking.configure(tracking.Tracking())
        return
    from rrf_ray.engine import tracking

    tracking.configure(tracking.Tracking(mlflow_uri=args.mlflow, mlflow_experiment=args.mlflow_experiment,
                                         wandb_project=args.wandb))


def resume_command(args: argparse.Namespace, storage: SweepStorage) -> str:
    """The command that continues this run: its own arguments, the storage spelled out, --resume."""
    sweep = args.sweep
    if Path(sweep).suffix in (".yaml", ".yml") or Path(sweep).exists():
        sweep = str(Path(sweep).resolve())
    parts = ["python", "-m", "rrf_ray.sweep", sweep, "--storage", storage.location, "--resume"]
    parts += ["--address", args.address] if args.address else []
    parts += [arg for override in args.overrides for arg in ("--set", override)]
    parts += ["--verbose"] if args.verbose else []
    parts += ["--mlflow", args.mlflow] if args.mlflow is not None else []
    parts += ["--mlflow-experiment", args.mlflow_experiment] if args.mlflow_experiment is not None else []
    parts += ["--wandb", args.wandb] if args.wandb else ["--wandb"] if args.wandb is not None else []
    return shlex.join(parts)


def check_storage(args: argparse.Namespace, storage: SweepStorage, spec, experiment: Experiment,
                  note: Callable[[str], None] = print) -> None:
    """Refuse a used storage without --resume, or with a spec that differs other than by growing;
    `note` when a spec grows, and when --resume finds nothing to resume."""
    if not storage.holds_anything(ignore=(LOCK_FILE,)):
        if args.resume:
            note(f"[sweep] --resume: {storage.uri} holds no sweep yet; starting a new one")
        return
    if not args.resume:
        raise ConfigError(f"{storage.uri} already holds a sweep: pass --resume to continue it, "
                          "or choose another --storage")
    stored = storage.read_text("spec.json")
    if stored is None:  # stopped before it wrote its spec: nothing to compare
        return
    try:
        stored = json.loads(stored)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{storage.uri}/spec.json is not valid JSON ({e}); move it away to start anew") from None
    change = compare_specs(stored, json.loads(spec.model_dump_json()), experiment.growable)
    if change.differing:
        may_grow = (f"; only {', '.join(experiment.growable)} may grow (a list by appending, a mapping by new keys)"
                    if experiment.growable else "")
        raise ConfigError(f"the spec differs from the one {storage.uri} was started with (its spec.json) in "
                          f"{', '.join(change.differing)}: resume with the same spec and --set overrides{may_grow}")
    if change.grown:
        note(f"[sweep] growing {storage.uri}: {'; '.join(change.grown)} (only the new trials run)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    set_verbose(args.verbose)
    if args.list:
        sweeps = list_sweeps()
        width = max(len(name) for name, _ in sweeps)
        print("\n".join(f"{name:<{width}}  {summary}" for name, summary in sweeps))
        return 0
    if args.sweep is None:
        parser.error("name a sweep (python -m rrf_ray.sweep --list names them) or give a YAML path")
    try:
        spec = load_spec(args.sweep, args.overrides)
        configure_tracking(args)
    except ConfigError as e:
        exit_on_user_error(e)
    experiment = get_experiment(spec.experiment)
    if args.dry_run:
        print(experiment.describe(spec))
        return 0
    if args.mlflow is not None:
        from rrf_ray.engine.tracking import check_mlflow_store

        try:
            check_mlflow_store()  # a local store MLflow refuses: exit 2 now, not a failed first stage
        except ConfigError as e:
            exit_on_user_error(e)
    try:
        storage = SweepStorage(args.storage, spec.name)
    except (ValueError, OSError) as e:
        exit_on_user_error(ConfigError(f"--storage {args.storage}: {e}"))
    command = shlex.join(["python", "-m", "rrf_ray.sweep", *(sys.argv[1:] if argv is None else argv)])
    lock = StorageLock(storage, command=command)

    def say_stopped(stop) -> None:
        """The last words of a stopped run: the lock let go, and how to resume."""
        lock.release()
        print_notes()
        sys.stdout.flush()
        print(f"stopped ({stop.name}): resume with  {resume_command(args, storage)}", file=sys.stderr, flush=True)

    catch_stop_signals(last_words=say_stopped)
    try:
        try:
            took_over = lock.acquire()
            if took_over:
                note(took_over)
            check_storage(args, storage, spec, experiment, note)
        except ConfigError:
            raise
        except (ValueError, OSError) as e:  # the storage cannot be read or written
            raise ConfigError(f"--storage {args.storage}: {e}") from None
        experiment.run(spec, storage, resume=args.resume, address=args.address)
    except (ConfigError, *experiment.user_errors) as e:  # a missing or unfit input: a user error, exit 2
        exit_on_user_error(e)
    except KeyboardInterrupt as interrupt:  # SIGINT or SIGTERM (engine.stopping)
        stop = stopped_by(interrupt)
        exit_on_next_signal()
        shutdown_ray()  # (a signal that ended our Ray too ends the process from engine.stopping instead)
        finish_stop()
        say_stopped(stop)
        return stop.exit_code
    finally:
        lock.release()
        print_notes()
    return 0


def shutdown_ray() -> None:
    """Stop this driver's Ray (a private one ends; a cluster loses this job's tasks and actors)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def report_main(argv: list[str] | None = None) -> int:
    """`python -m rrf_ray.report SWEEP_DIR`: rebuild a sweep's report from its directory alone."""
    parser = argparse.ArgumentParser(prog="python -m rrf_ray.report",
                                     description="Rebuild a sweep directory's report (report.md, results, figures).")
    parser.add_argument("sweep_dir", type=Path, help="a sweep directory (with spec.json and trials/)")
    args = parser.parse_args(argv)
    try:
        spec_file = args.sweep_dir / "spec.json"  # older sweep directories have none: the default experiment's
        raw = json.loads(spec_file.read_text()) if spec_file.exists() else {}
        experiment = get_experiment(raw.get("experiment", default_experiment()))
        if experiment.write_report is None:
            raise ConfigError(f"experiment {experiment.name!r} has no report writer")
        path = experiment.write_report(args.sweep_dir)
    except ValueError as e:  # a bad spec.json, or the experiment's report error (e.g. no trials.json)
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
