"""`python -m rrf_ray.sweep NAME|PATH`: run any registered experiment's sweep on Ray.

The YAML's `experiment:` key picks the experiment (engine.registry); its runner does the
stages, each idempotent (content-addressed artifacts under the sweep's storage), so
`--resume` reuses every finished artifact and trial. `--dry-run` prints the stages,
trials and resource needs and runs nothing. A bad spec, a bad argument or a missing input
prints one error line and exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rrf_ray.engine.loading import load_spec
from rrf_ray.engine.registry import default_experiment, get_experiment
from rrf_ray.engine.spec import ConfigError, exit_on_user_error
from rrf_ray.engine.storage import SweepStorage


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rrf_ray.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", help="a name in sweeps/ (e.g. maze2d, maze2d-smoke, maze2d-tiny) or a YAML path")
    p.add_argument("--storage", default="results",
                   help="where sweeps live, one per name: a directory (default ./results; shared by every node "
                        "on a cluster) or a URI pyarrow opens (s3://bucket/path, gs://...)")
    p.add_argument("--resume", action="store_true", help="continue a sweep in its storage directory")
    p.add_argument("--dry-run", action="store_true", help="print stages, trials and resource needs; run nothing")
    p.add_argument("--address", default=None, help="Ray cluster to join (default: RAY_ADDRESS, else one `ray start` started on this machine, else a private local Ray for this sweep)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        spec = load_spec(args.sweep, args.overrides)
    except ConfigError as e:
        exit_on_user_error(e)
    experiment = get_experiment(spec.experiment)
    if args.dry_run:
        print(experiment.describe(spec))
        return 0
    try:
        storage = SweepStorage(args.storage, spec.name)
        used = storage.holds_anything()
    except (ValueError, OSError) as e:
        exit_on_user_error(ConfigError(f"--storage {args.storage}: {e}"))
    if used:
        if not args.resume:
            exit_on_user_error(ConfigError(f"{storage.uri} already holds a sweep: pass --resume to continue it, "
                                           "or choose another --storage"))
        stored = storage.read_text("spec.json")
        if stored is not None and json.loads(stored) != json.loads(spec.model_dump_json()):
            exit_on_user_error(ConfigError(f"the spec differs from the one {storage.uri} was started with "
                                           "(its spec.json); resume with the same spec and --set overrides"))
    try:
        experiment.run(spec, storage, resume=args.resume, address=args.address)
    except (ConfigError, *experiment.user_errors) as e:  # a missing or unfit input: a user error, exit 2
        exit_on_user_error(e)
    return 0


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
