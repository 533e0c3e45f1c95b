"""Growing a sweep: a spec may differ from the stored one only by growing the fields its
experiment declares growable (a list by appending, a mapping by new keys); any other
difference is named by its dotted field."""

import json

from rrf_ray.engine.loading import load_spec
from rrf_ray.engine.spec import compare_specs

STORED = {"name": "s", "seeds": [0, 1], "goals": None, "reward": {"learning_rate": 0.001, "hidden": [32, 32]},
          "mazes": {"open": {"layout": ["#O#"], "goals": [[1, 1]]}}}
GROWABLE = ("seeds", "goals", "mazes")


def changed(**fields) -> dict:
    new = json.loads(json.dumps(STORED))
    for path, value in fields.items():
        node, keys = new, path.split("__")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return new


def test_the_same_spec_is_no_change():
    change = compare_specs(STORED, changed(), GROWABLE)
    assert change.grown == [] and change.differing == []


def test_appending_to_a_growable_list_grows_it():
    change = compare_specs(STORED, changed(seeds=[0, 1, 2, 3]), GROWABLE)
    assert change.grown == ["seeds + [2, 3]"] and change.differing == []


def test_a_growable_list_may_not_lose_or_reorder_elements():
    assert compare_specs(STORED, changed(seeds=[1, 2]), GROWABLE).differing == ["seeds"]
    assert compare_specs(STORED, changed(seeds=[1, 0]), GROWABLE).differing == ["seeds"]
    assert compare_specs(STORED, changed(goals=[1, 2]), GROWABLE).differing == ["goals"]  # None meant "all"


def test_a_growable_mapping_grows_by_new_keys_only():
    grown = changed(mazes={**STORED["mazes"], "umaze": {"layout": ["#OO#"], "goals": [[1, 2]]}})
    change = compare_specs(STORED, grown, GROWABLE)
    assert change.grown == ["mazes + umaze"] and change.differing == []
    # an old key's value changed: named down to the field, the new key not blamed
    edited = json.loads(json.dumps(grown))
    edited["mazes"]["open"]["layout"] = ["#OOO#"]
    change = compare_specs(STORED, edited, GROWABLE)
    assert change.differing == ["mazes.open.layout"] and change.grown == []


def test_any_other_difference_is_named_by_its_dotted_field():
    change = compare_specs(STORED, changed(reward__learning_rate=0.5, seeds=[0, 1, 2]), GROWABLE)
    assert change.differing == ["reward.learning_rate"] and change.grown == ["seeds + [2]"]
    assert compare_specs(STORED, changed(reward__hidden=[32, 32, 8]), GROWABLE).differing == ["reward.hidden"]
    assert compare_specs(STORED, changed(seeds=[0, 1, 2]), ()).differing == ["seeds"]  # nothing growable
    extra = {**STORED, "new_block": {"x": 1}}
    assert compare_specs(STORED, extra, GROWABLE).differing == ["new_block"]


def test_a_real_spec_grown_by_a_seed_and_changed_in_a_model_setting():
    stored = json.loads(load_spec("maze2d-tiny").model_dump_json())
    grown = json.loads(load_spec("maze2d-tiny", ["seeds=[0, 1]"]).model_dump_json())
    assert compare_specs(stored, grown, GROWABLE).grown == ["seeds + [1]"]
    other = json.loads(load_spec("maze2d-tiny", ["seeds=[0, 1]", "diffusion.dim=16"]).model_dump_json())
    assert compare_specs(stored, other, GROWABLE).differing == ["diffusion.dim"]
