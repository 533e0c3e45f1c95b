from pathlib import Path

import pytest
import yaml

from rrf_ray.engine.loading import SWEEPS_DIR, list_sweeps, load_spec, parse_override, read_raw, spec_model
from rrf_ray.engine.spec import ConfigError
from rrf_ray.maze2d.mazes import DEFAULT_GOALS

SWEEPS = sorted(SWEEPS_DIR.glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_every_shipped_sweep_loads(path):
    experiment = read_raw(path).get("experiment", "maze2d")
    spec = load_spec(path)
    assert isinstance(spec, spec_model(experiment)) and spec.experiment == experiment


def test_paper_profile_values():
    spec = load_spec("maze2d")
    assert list(spec.mazes) == ["open", "umaze", "medium", "large"]
    assert all(len(m.goals) == 8 for m in spec.mazes.values())
    assert spec.seeds == [0, 1, 2, 3, 4]
    assert spec.data.base_transitions == spec.data.expert_transitions == 10_000_000
    assert (spec.windows.horizon, spec.diffusion.n_timesteps, spec.diffusion.dim) == (256, 100, 32)
    assert spec.diffusion.dim_mults == [1, 4, 8] and spec.diffusion.prediction == "sample"
    assert spec.reward.hidden == [128, 64, 32] and spec.reward.learning_rate == 5e-5
    for name, m in spec.mazes.items():
        assert [tuple(g) for g in m.goals] == [tuple(map(float, g)) for g in DEFAULT_GOALS[name]]


def test_overrides_are_yaml_values():
    spec = load_spec("maze2d", ["seeds=[3, 4]", "data.action_noise=0.25", "windows.stride=8",
                                "mazes.umaze.goals=[[1, 1], [3, 3]]", "goals=[1, 2]"])
    assert spec.seeds == [3, 4]
    assert spec.data.action_noise == 0.25 and spec.windows.stride == 8
    assert spec.mazes["umaze"].goals == [(1.0, 1.0), (3.0, 3.0)]
    assert spec.windows.span == (256 - 1) * 8 + 1


def test_a_user_can_add_a_maze_in_yaml(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("mazes:\n  corridor:\n    layout: ['#####', '#OOO#', '#####']\n    goals: [[1, 3]]\n")
    spec = load_spec(f)
    assert list(spec.mazes) == ["corridor"]
    assert tuple(spec.maze("corridor").goal_xy(1)) == (1.0, 0.0)


@pytest.mark.parametrize("override, message", [
    ("data.nope=1", "data.nope: unknown key"),
    ("nope=1", "nope: unknown key"),
    ("data.heldout_fraction=1.5", "data.heldout_fraction"),
    ("diffusion.prediction=noise", "diffusion.prediction"),
    ("mazes.umaze.goals=[[2, 1]]", "maze 'umaze' goal 1 (2.0, 1.0): inside a wall"),
    ("goals=[12]", "goals: Value error, goal 12 does not exist"),
    ("seeds=[]", "seeds"),
    ("data.action_noise.x=1", "data.action_noise is not a mapping"),
    ("novalue", "must look like dotted.key=value"),
    ("evaluation.t=100", "evaluation.t 100 must be below diffusion.n_timesteps (100)"),
])
def test_bad_overrides_name_the_field(override, message):
    with pytest.raises(ConfigError) as e:
        load_spec("maze2d", [override])
    assert message in str(e.value)


def test_parse_override():
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("a=true") == (["a"], True)
    assert parse_override("a=1e-3") == (["a"], 1e-3)


def test_expert_spec_overrides_only_what_it_sets():
    from rrf_ray.diffusion.spec import DiffusionSpec
    from rrf_ray.maze2d.spec import ExpertSpec

    base = DiffusionSpec(train_steps=3000, checkpoint_every=1500, learning_rate=1e-3)
    assert ExpertSpec().diffusion(base) == base
    expert = ExpertSpec(init="base", train_steps=600, ema_start=100).diffusion(base)
    assert (expert.train_steps, expert.ema_start, expert.checkpoint_every) == (600, 100, 600)
    assert expert.learning_rate == 1e-3 and expert.dim_mults == base.dim_mults


def test_random_goals_are_drawn_reproducibly_inside_free_cells():
    from rrf_ray.maze2d.mazes import Maze

    sets = ["mazes.umaze.goals={random: 8, seed: 3}", "mazes.open.goals={random: 8, seed: 3}"]
    a, b = load_spec("maze2d-smoke", sets), load_spec("maze2d-smoke", sets)
    assert a.mazes["umaze"].goals == b.mazes["umaze"].goals and len(a.mazes["umaze"].goals) == 8
    assert a.mazes["umaze"].random_goals.seed == 3
    other = load_spec("maze2d-smoke", ["mazes.umaze.goals={random: 8, seed: 4}"])
    assert other.mazes["umaze"].goals != a.mazes["umaze"].goals
    assert a.mazes["open"].goals != a.mazes["umaze"].goals  # one seed, independent mazes
    for name in ("umaze", "open"):
        maze = a.maze(name)  # Maze() re-checks every goal is inside a free cell
        for r, c in maze.goals:
            cell = maze.cell_of((r, c))
            assert abs(r - cell[0]) <= 0.4 + 1e-9 and abs(c - cell[1]) <= 0.4 + 1e-9  # 0.1 from the edges
    # spec.json reads back to the same goals, so --resume sees the same spec
    assert type(a).model_validate_json(a.model_dump_json()) == a
    big = load_spec("maze2d-smoke", ["mazes.umaze.goals={random: 400, seed: 0}"]).maze("umaze")
    cells = {big.cell_of(g) for g in big.goals}
    assert cells == set(big.free_cells)  # every free cell is drawn from
    assert Maze.default("umaze").goals != big.goals[:8]


def test_bad_random_goals_name_the_field():
    with pytest.raises(ConfigError, match=r"mazes.umaze.*random"):
        load_spec("maze2d-smoke", ["mazes.umaze.goals={random: 0}"])
    with pytest.raises(ConfigError, match=r"mazes.umaze.*unknown key"):
        load_spec("maze2d-smoke", ["mazes.umaze.goals={random: 4, sed: 1}"])


def test_a_spec_starts_from_another_and_states_only_what_it_changes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "mine.yaml").write_text("# my profile\nbase: maze2d-tiny\nseeds: [7]\n"
                                                   "diffusion: {train_steps: 3}\n")
    (tmp_path / "grandchild.yaml").write_text("base: mine\nname: grandchild\n")
    parent, child = load_spec("maze2d-tiny"), load_spec(tmp_path / "grandchild.yaml")
    assert child.seeds == [7] and child.name == "grandchild"
    assert child.diffusion.train_steps == 3 and child.diffusion.dim == parent.diffusion.dim  # merged key by key
    assert child.mazes == parent.mazes and child.reward == parent.reward
    assert ("mine", "my profile") in list_sweeps() and ("maze2d-tiny", "") != dict(list_sweeps()).get("maze2d-tiny")
    (tmp_path / "swapped.yaml").write_text("base: maze2d-smoke\nmazes: {open: null, medium: {}}\n")
    swapped = load_spec(tmp_path / "swapped.yaml")  # null removes a key of the base: one maze swapped for another
    assert list(swapped.mazes) == ["umaze", "medium"] and swapped.mazes["umaze"] == load_spec("maze2d-smoke").mazes["umaze"]
    (tmp_path / "sweeps" / "loop.yaml").write_text("base: loop2\n")
    (tmp_path / "sweeps" / "loop2.yaml").write_text("base: loop\n")
    with pytest.raises(ConfigError, match="loops"):
        load_spec("loop")
    (tmp_path / "sweeps" / "nobase.yaml").write_text("base: no-such-sweep\n")
    with pytest.raises(ConfigError, match="base: no sweep named 'no-such-sweep'"):
        load_spec("nobase")


def test_every_shipped_sweep_is_listed_with_a_summary():
    listed = dict(list_sweeps())
    assert set(listed) >= {p.stem for p in SWEEPS}
    assert all(listed[p.stem] for p in SWEEPS), [p.stem for p in SWEEPS if not listed[p.stem]]

