"""Local Minari datasets for rrf_ray.

  python -m rrf_ray.data maze2d --maze MAZE [--goal K] --transitions N --seed S ...
      the Maze2D base dataset (no --goal) or the expert dataset of goal K, in parallel Ray tasks
  python -m rrf_ray.data d4rl-hdf5 FILE --id ID --env ENV [--root DIR] [--overwrite]
      a D4RL HDF5 file (e.g. halfcheetah_medium_replay-v2.hdf5) as Minari dataset ID for ENV
  python -m rrf_ray.data sac ENV_ID [ENV_ID ...] --steps N [--seed S] [--medium-return R] [--root DIR] ...
      D4RL-style replay, medium and expert datasets made by training SAC (pip install -e '.[rl]'),
      one Ray task per environment: rrf/ENV-sac-{replay,medium,expert}-v0
  python -m rrf_ray.data digits-pipeline --out DIR [--preset default|tiny] [--seed S] [--overwrite] ...
      a small text-to-image Stable Diffusion pipeline trained on scikit-learn's digits, with its
      judge's data and prompts files (rrf_ray.image.digits), in one Ray task
"""

from __future__ import annotations

import argparse
import sys

from rrf_ray.engine.loading import load_spec
from rrf_ray.engine.spec import ConfigError, exit_on_user_error
from rrf_ray.image.digits import PRESETS as DIGITS_PRESETS
from rrf_ray.maze2d.mazes import MazeError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rrf_ray.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("maze2d", help="generate a Maze2D base or expert dataset")
    m.add_argument("--maze", required=True, help="maze name (open, umaze, medium, large, or one in --spec)")
    m.add_argument("--goal", type=int, default=None, help="1-based goal index: expert data for that goal")
    m.add_argument("--transitions", type=int, default=None,
                   help="transitions to generate (default: the spec's base_/expert_transitions)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--root", default=None, help="Minari datasets root (default: MINARI_DATASETS_PATH)")
    m.add_argument("--workers", type=int, default=None, help="parallel Ray tasks (default: all CPUs)")
    m.add_argument("--overwrite", action="store_true", help="replace a dataset made from another spec")
    m.add_argument("--spec", default=None, help="sweep name or YAML path for mazes and data settings")
    m.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field, e.g. --set data.action_noise=0.3")
    m.add_argument("--address", default=None, help="Ray address (default: running cluster, else local)")
    m.add_argument("--no-progress", action="store_true")
    d = sub.add_parser("d4rl-hdf5", help="convert a D4RL HDF5 file into a local Minari dataset")
    d.add_argument("file", help="the D4RL .hdf5 file")
    d.add_argument("--id", required=True, dest="dataset_id", help="Minari dataset id, e.g. d4rl/halfcheetah-medium-replay-v2")
    d.add_argument("--env", required=True, help="gymnasium environment id, e.g. HalfCheetah-v5")
    d.add_argument("--root", default=None, help="Minari datasets root (default: MINARI_DATASETS_PATH)")
    d.add_argument("--overwrite", action="store_true", help="replace a dataset of that id made from another file")
    s = sub.add_parser("sac", help="train SAC and write D4RL-style replay, medium and expert datasets")
    s.add_argument("env_ids", nargs="+", metavar="ENV_ID", help="gymnasium MuJoCo environment, e.g. HalfCheetah-v5")
    s.add_argument("--steps", type=int, required=True,
                   help="SAC environment steps (80000 took 31 min on 2 CPU cores; HalfCheetah reaches a return "
                        "of ~5000 there)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--medium-return", type=float, default=None,
                   help="the return that makes a policy 'medium' (default: 1/3 of the way from a random policy's "
                        "return to the final policy's, as D4RL); "
                        "only with a single ENV_ID")
    s.add_argument("--episodes", type=int, default=100, help="rollouts of the medium and of the expert policy")
    s.add_argument("--episode-steps", type=int, default=None, help="episode length (default: the environment's)")
    s.add_argument("--checkpoint-every", type=int, default=None,
                   help="steps between checkpoints and evaluations (default: steps / 20)")
    s.add_argument("--root", default=None, help="Minari datasets root (default: MINARI_DATASETS_PATH)")
    s.add_argument("--overwrite", action="store_true", help="retrain and replace what another run made")
    s.add_argument("--address", default=None, help="Ray address (default: running cluster, else local)")
    s.add_argument("--no-progress", action="store_true")
    g = sub.add_parser("digits-pipeline", help="train a small Stable Diffusion pipeline on scikit-learn's digits")
    g.add_argument("--out", required=True, help="the pipeline directory to write (or reuse)")
    g.add_argument("--preset", default="default", choices=tuple(DIGITS_PRESETS),
                   help="default (minutes on 2 cores) or tiny (the tests', seconds)")
    g.add_argument("--seed", type=int, default=None, help="training seed (default: the preset's, 0)")
    g.add_argument("--threads", type=int, default=None,
                   help="torch threads in the task (default: its CPUs). On a machine shared with other work "
                        "give 1: there the tiny preset took 460 s on 2 threads against 36 s on 1")
    g.add_argument("--overwrite", action="store_true",
                   help="replace a digits pipeline in --out built with other settings")
    g.add_argument("--address", default=None, help="Ray address (default: running cluster, else local)")
    g.add_argument("--no-progress", action="store_true")
    return parser


def print_digits_summary(summary: dict) -> None:
    out = summary["path"]
    state = "reused" if summary.get("reused") else "built"
    t = summary["timings_s"]
    print(f"digits pipeline {state}: {out} (settings {summary['fingerprint']}, seed {summary['settings']['seed']})")
    print(f"  training: VAE {t['vae']:.0f} s, UNet + text encoder {t['diffusion']:.0f} s, total {t['total']:.0f} s "
          f"on {summary['threads']} thread(s); final losses {summary['losses']['vae_reconstruction']:.4f} "
          f"(VAE reconstruction), {summary['losses']['diffusion']:.4f} (diffusion)")
    j = summary["judge"]
    print(f"  judge: {j['classifier']}, held-out accuracy {j['holdout_accuracy']:.3f} ({j['test']} digits; fitted "
          f"on {j['fit']} others)")
    check = summary.get("sample_check") or {}
    if check:
        print(f"  sample check: the judge names the prompted digit in {check['accuracy']:.0%} of "
              f"{10 * check['images_per_digit']} images (DDIM {check['steps']} steps, guidance "
              f"{check['guidance_scale']:g})")
    print(f"  prompts: {out}/prompts/{{0..9}}.txt; safety concept of digit d: 'a handwritten <d>' "
          "(rrf_ray.image.digits.concept_caption)")


def get_or_exit_on_user_error(refs, *user_errors: type[Exception]):
    """ray.get(refs); a task that failed on one of `user_errors` (a bad argument, a missing or foreign
    dataset) prints that one line and exits 2, as the same error raised here would."""
    import ray

    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, user_errors):
            exit_on_user_error(e.cause)
        raise


def digits_main(args) -> int:
    """One Ray task with every CPU of a node trains the pipeline; a finished build is reused here, without Ray."""
    from pathlib import Path

    from rrf_ray.image.digits import DigitsPipelineSettings, build_digits_pipeline, check_output

    try:
        if args.seed is not None and args.seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {args.seed}")
        if args.threads is not None and args.threads <= 0:
            raise ConfigError(f"--threads must be positive, got {args.threads}")
        settings = DigitsPipelineSettings.preset(args.preset, **({} if args.seed is None else {"seed": args.seed}))
        existing = check_output(args.out, settings, args.overwrite)
    except ConfigError as e:
        exit_on_user_error(e)
    out = str(Path(args.out).expanduser().resolve())  # absolute: the task may run in another directory
    if existing is not None:
        print_digits_summary({**existing, "path": out})
        return 0

    import ray

    from rrf_ray.engine.ray_runtime import init_ray

    init_ray(args.address, dashboard=False)
    # every CPU of the largest node (on one machine: of the cluster); more could never be scheduled
    cpus = max([int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")] + [1])
    task = ray.remote(build_digits_pipeline).options(num_cpus=cpus, max_retries=0)
    ref = task.remote(out, settings, threads=args.threads or cpus, progress=not args.no_progress,
                      overwrite=args.overwrite)
    print_digits_summary(get_or_exit_on_user_error(ref, ConfigError))
    return 0


def sac_main(args) -> int:
    """One Ray task per environment: train SAC (or reuse / resume it), then write its three datasets."""
    try:
        import stable_baselines3  # noqa: F401
    except ImportError:
        exit_on_user_error(ConfigError("`sac` needs stable-baselines3: pip install -e '.[rl]'"))
    import gymnasium as gym

    for name, value in (("--steps", args.steps), ("--episodes", args.episodes)):
        if value <= 0:
            exit_on_user_error(ConfigError(f"{name} must be positive, got {value}"))
    if args.medium_return is not None and len(args.env_ids) > 1:
        exit_on_user_error(ConfigError("--medium-return is one environment's return: give a single ENV_ID"))
    for env_id in args.env_ids:
        try:
            gym.spec(env_id)
        except gym.error.Error as e:
            exit_on_user_error(ConfigError(f"unknown environment {env_id!r}: {e}"))

    import ray

    from rrf_ray.data.minari_io import DatasetError
    from rrf_ray.data.sac import DatasetSettings, SACSettings, make_sac_datasets
    from rrf_ray.engine.ray_runtime import init_ray

    init_ray(args.address, dashboard=False)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)) // len(args.env_ids))
    data = DatasetSettings(medium_return=args.medium_return, episodes=args.episodes)
    task = ray.remote(make_sac_datasets).options(num_cpus=cpus, max_retries=0)
    refs = [task.remote(SACSettings(env_id, args.steps, args.seed, args.episode_steps, args.checkpoint_every),
                        data, args.root, threads=cpus, progress=not args.no_progress, overwrite=args.overwrite)
            for env_id in args.env_ids]
    for summary in get_or_exit_on_user_error(refs, DatasetError):
        print(f"{summary['env_id']} seed {summary['seed']}: random policy {summary['random_return']}, "
              f"evaluation returns by step {summary['evaluations']}")
        for kind, did in summary["datasets"].items():
            k = summary[kind]
            print(f"  {did}: {k['episodes']} episodes, return {k['mean_return']:.1f} +- {k['std_return']:.1f}")
        print(f"  policies: {summary['policies']}; learning curve: {summary['learning_curve']}")
    return 0


def convert_main(args) -> int:
    from rrf_ray.data.minari_io import DatasetError, dataset_dir
    from rrf_ray.data.d4rl import convert_d4rl_hdf5

    try:
        did = convert_d4rl_hdf5(args.file, args.dataset_id, args.env, root=args.root, overwrite=args.overwrite)
    except DatasetError as e:
        exit_on_user_error(e)
    print(f"{did} -> {dataset_dir(did, args.root)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "d4rl-hdf5":
        return convert_main(args)
    if args.command == "sac":
        return sac_main(args)
    if args.command == "digits-pipeline":
        return digits_main(args)
    try:
        spec = load_spec(args.spec, args.overrides)
        maze = spec.maze(args.maze)
        if args.goal is not None:
            maze.goal(args.goal)  # validates the index
        transitions = args.transitions or (
            spec.data.base_transitions if args.goal is None else spec.data.expert_transitions)
        if transitions <= 0:
            raise ConfigError(f"--transitions must be positive, got {transitions}")
        if args.workers is not None and args.workers <= 0:
            raise ConfigError(f"--workers must be positive, got {args.workers}")
    except (ConfigError, MazeError) as e:
        exit_on_user_error(e)

    from rrf_ray.data.minari_io import DatasetError, dataset_dir
    from rrf_ray.engine.ray_runtime import init_ray
    from rrf_ray.maze2d.datasets import generate_maze2d

    init_ray(args.address, num_cpus=args.workers, dashboard=False)
    try:
        did = generate_maze2d(maze, args.goal, transitions, args.seed, spec.data, root=args.root,
                              workers=args.workers, overwrite=args.overwrite, progress=not args.no_progress)
    except DatasetError as e:
        exit_on_user_error(e)
    print(f"{did} -> {dataset_dir(did, args.root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
