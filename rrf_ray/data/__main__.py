"""Local Minari datasets for rrf_ray.

  python -m rrf_ray.data maze2d --maze MAZE [--goal K] --transitions N --seed S ...
      the Maze2D base dataset (no --goal) or the expert dataset of goal K, in parallel Ray tasks
  python -m rrf_ray.data d4rl-hdf5 FILE --id ID --env ENV [--root DIR] [--overwrite]
      a D4RL HDF5 file (e.g. halfcheetah_medium_replay-v2.hdf5) as Minari dataset ID for ENV
"""

from __future__ import annotations

import argparse
import sys

from rrf_ray.engine.loading import load_spec
from rrf_ray.engine.spec import ConfigError, exit_on_user_error
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
    return parser


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
