"""Relative reward extraction through the real path: Ray tasks -> Parquet -> Ray Data -> Ray Train."""

import analytic_models
import numpy as np
import pyarrow.parquet as pq
import pytest
import ray.cloudpickle
import torch
from analytic_models import AnalyticModel, Potential
from tolerances import assert_float32_close

from rrf_ray.engine.spec import ResourceSpec
from rrf_ray.engine.training import NonFiniteLossError
from rrf_ray.rrf.align import train_reward
from rrf_ray.rrf.pregenerate import WindowDraw, pregenerate
from rrf_ray.rrf.reward_nets import WindowMLPReward, build_reward_net, load_reward, reward_gradient
from rrf_ray.rrf.shards import Manifest, ShardError, verify_shards
from rrf_ray.rrf.spec import PregenSpec, RewardSpec

# Ray workers cannot import tests/: ship the synthetic models by value.
ray.cloudpickle.register_pickle_by_value(analytic_models)

H, D = 4, 2


def window_draw(n, seed=0, first_episode=0, dataset=1):
    """n random normalised windows, window i from episode first_episode + i // 4."""
    windows = np.random.default_rng(seed).uniform(-1, 1, size=(n, H, D)).astype(np.float32)
    return WindowDraw(windows, np.full(n, dataset, np.int8), first_episode + np.arange(n) // 4)


def analytic_pair(seed=0):
    phi = Potential(H * D, seed=seed)
    return AnalyticModel(H, D), AnalyticModel(H, D, potential=phi), phi


def test_pregenerated_triples_differ_by_grad_phi_exactly(ray_local, tmp_path):
    base, expert, phi = analytic_pair()
    spec = PregenSpec(chains_per_kind=16, chains_per_shard=8, val_fraction=0.5)
    manifest = pregenerate(base, expert, tmp_path, spec, seed=0, progress=False)
    assert manifest.rows() == 2 * 16 * 10
    assert manifest.rows("val") == manifest.rows("train") == 160
    table = pq.read_table(tmp_path / "shard-00000.parquet")
    assert str(table.schema.field("x_next").type).startswith("extension<arrow.fixed_shape_tensor")
    x = torch.from_numpy(table["x_next"].combine_chunks().to_numpy_ndarray())
    x_base = table["x_base"].combine_chunks().to_numpy_ndarray()
    diff = table["x_expert"].combine_chunks().to_numpy_ndarray() - x_base
    # same noise: no noise in the difference, only the rounding of the two means (scale: the means')
    assert_float32_close(diff, phi.grad(x).numpy(), scale=np.abs(x_base).max())
    kinds = table["chain_kind"].to_numpy()
    assert set(kinds) == {1, 2}
    # each chain follows its own model: the next x_next of a kind-1 chain is its x_base
    t = table["t"].to_numpy()
    ids = table["chain_id"].to_numpy()
    sel = lambda k, step, cid: np.flatnonzero((kinds == k) & (t == step) & (ids == cid))[0]  # noqa: E731
    for k, col in ((1, "x_base"), (2, "x_expert")):
        row, nxt = sel(k, 9, 0), sel(k, 8, 0)
        np.testing.assert_array_equal(table[col].combine_chunks().to_numpy_ndarray()[row],
                                      table["x_next"].combine_chunks().to_numpy_ndarray()[nxt])


@pytest.mark.parametrize("path", ["in_process", "ray_train_worker"])
def test_learned_reward_matches_the_potential(ray_local, tmp_path, path):
    """The analytic acceptance test: rho = phi + const (r >= 0.99), gradient cosine >= 0.95.

    in_process: a one-CPU run in this process, the triples read with pyarrow; ray_train_worker:
    a Ray Train worker fed by Ray Data (read once, kept in the worker's memory)."""
    base, expert, phi = analytic_pair()
    shards = tmp_path / "shards"
    pregenerate(base, expert, shards, PregenSpec(chains_per_kind=256, chains_per_shard=32, val_fraction=0.25),
                seed=0, progress=False)
    spec = RewardSpec(model_horizon=H, hidden=[64, 64], learning_rate=2e-3, batch_size=256, train_steps=1500,
                      ema_decay=0.99, checkpoint_every=750, log_every=250, val_batches=5)
    resources = ResourceSpec(cpus_per_worker=1, local_mode=path == "in_process")
    result = train_reward(shards, spec, resources, tmp_path / "runs", "analytic", seed=0)
    assert result.metrics["step"] == 1500
    assert result.metrics["val_cosine"] >= 0.95, result.metrics

    reward = load_reward(result.checkpoint)
    manifest = Manifest.load(shards)
    val = pq.read_table(manifest.paths(shards, "val"))
    x = torch.from_numpy(val["x_next"].combine_chunks().to_numpy_ndarray())
    ts = torch.from_numpy(val["t"].to_numpy()).long()
    rs = []
    for step in torch.unique(ts):  # rho may add a different constant at each t
        xs = x[ts == step]
        rho = reward(xs, torch.full((len(xs),), int(step))).detach().numpy()
        rs.append(np.corrcoef(rho, phi(xs).numpy())[0, 1])
    assert np.mean(rs) >= 0.99, rs
    grad = reward_gradient(reward.net, x, ts, create_graph=False)
    cos = torch.nn.functional.cosine_similarity(grad.flatten(1), phi.grad(x).flatten(1), dim=1).mean()
    assert cos >= 0.95


def test_truncated_shard_is_named_and_repaired(ray_local, tmp_path):
    base, expert, _ = analytic_pair()
    spec = PregenSpec(chains_per_kind=16, chains_per_shard=4, val_fraction=0.25)
    pregenerate(base, expert, tmp_path, spec, seed=0, progress=False)
    victim = tmp_path / "shard-00002.parquet"
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 2])
    with pytest.raises(ShardError, match="shard-00002.parquet"):
        train_reward(tmp_path, RewardSpec(train_steps=5), ResourceSpec(), tmp_path / "runs", "bad")
    pregenerate(base, expert, tmp_path, spec, seed=0, progress=False)  # repairs only that shard
    assert victim.read_bytes() == good  # same seed per shard: identical content
    verify_shards(tmp_path)


@pytest.mark.parametrize("algorithm", ["pregenerate", "dataset_noising"])
def test_shards_written_in_process_equal_the_tasks_shards(ray_local, tmp_path, algorithm):
    """A one-CPU trial writes its shards itself: same seeds per shard, so the same triples."""
    base, expert, _ = analytic_pair()
    train, val = window_draw(64), window_draw(16, seed=1, first_episode=100)
    spec = PregenSpec(algorithm=algorithm, chains_per_kind=16, chains_per_shard=4, noised_windows=40,
                      noised_per_shard=10, val_fraction=0.25)
    by_task = pregenerate(base, expert, tmp_path / "tasks", spec, seed=3, train=train, val=val, progress=False)
    here = pregenerate(base, expert, tmp_path / "here", spec, seed=3, train=train, val=val, progress=False,
                       in_process=True)
    assert set(here.shards) == set(by_task.shards) and len(here.shards) >= 4
    for name in by_task.shards:
        assert here.shards[name]["split"] == by_task.shards[name]["split"]
        assert pq.read_table(tmp_path / "here" / name).equals(pq.read_table(tmp_path / "tasks" / name)), name
    verify_shards(tmp_path / "here")


@pytest.mark.parametrize("cache", [True, False])
def test_epochs_cover_every_triple(ray_local, tmp_path, cache):
    """Cached or streamed, an epoch visits each training triple once; cached epochs are reshuffled."""
    import ray.data

    from rrf_ray.rrf.align import EpochSource

    base, expert, _ = analytic_pair()
    manifest = pregenerate(base, expert, tmp_path, PregenSpec(chains_per_kind=16, chains_per_shard=8,
                                                              val_fraction=0.0), seed=0, progress=False)
    source = EpochSource(ray.data.read_parquet(manifest.paths(tmp_path)), 32, torch.device("cpu"), cache, seed=0)
    orders = []
    for _ in range(2):
        batches = list(source.epoch())
        assert all(len(b["t"]) == 32 for b in batches)
        x = torch.cat([b["x_next"] for b in batches]).flatten(1)
        assert len(x) == manifest.rows() and len(torch.unique(x, dim=0)) == manifest.rows()
        orders.append(x)
    assert (source.cached is not None) == cache
    if cache:
        assert not torch.equal(orders[0], orders[1])


def test_shard_with_wrong_schema_is_named(ray_local, tmp_path):
    base, expert, _ = analytic_pair()
    pregenerate(base, expert, tmp_path, PregenSpec(chains_per_kind=8, chains_per_shard=4, val_fraction=0.0),
                seed=0, progress=False)
    manifest = Manifest.load(tmp_path)
    manifest.horizon = 8  # as if the shards were made for another window length
    manifest.save(tmp_path)
    with pytest.raises(ShardError, match=r"shard-00000.parquet has schema"):
        verify_shards(tmp_path)


def test_other_spec_in_same_directory_is_refused(ray_local, tmp_path):
    base, expert, _ = analytic_pair()
    pregenerate(base, expert, tmp_path, PregenSpec(chains_per_kind=4, chains_per_shard=4), seed=0, progress=False)
    with pytest.raises(ShardError, match="another spec"):
        pregenerate(base, expert, tmp_path, PregenSpec(chains_per_kind=4, chains_per_shard=4), seed=1, progress=False)


def test_non_finite_loss_stops_with_the_step(ray_local, tmp_path):
    base = AnalyticModel(H, D)
    expert = AnalyticModel(H, D, poison=True)
    pregenerate(base, expert, tmp_path / "s", PregenSpec(chains_per_kind=8, chains_per_shard=8, val_fraction=0.0),
                seed=0, progress=False)
    with pytest.raises(NonFiniteLossError, match=r"\[nan\] reward alignment loss is nan at step 0: stopping"):
        train_reward(tmp_path / "s", RewardSpec(model_horizon=H, batch_size=16, train_steps=5), ResourceSpec(),
                     tmp_path / "runs", "nan")


@pytest.mark.parametrize("grad_at", ["x_t", "base_mean"])
def test_dataset_noising_triples(ray_local, tmp_path, grad_at):
    """Algorithm 1: triples from noised dataset windows; grad rho taken where the spec says."""
    base, expert, phi = analytic_pair()
    spec = PregenSpec(algorithm="dataset_noising", noised_windows=300, noised_per_shard=100, grad_at=grad_at,
                      val_fraction=0.0)
    manifest = pregenerate(base, expert, tmp_path, spec, seed=0, train=window_draw(500), progress=False)
    assert manifest.rows() == 300
    table = pq.read_table(manifest.paths(tmp_path))
    x_next = table["x_next"].combine_chunks().to_numpy_ndarray()
    x_base = table["x_base"].combine_chunks().to_numpy_ndarray()
    x_expert = table["x_expert"].combine_chunks().to_numpy_ndarray()
    assert set(table["chain_kind"].to_numpy()) == {0}
    # step 0 holds the inpainted start state in every column; compare the free steps
    x_t = x_next.copy()
    if grad_at == "base_mean":  # the analytic base mean is 0.9 * x_t, start state inpainted
        x_t[:, 1:] = x_base[:, 1:] / 0.9
    if grad_at == "base_mean":
        np.testing.assert_array_equal(x_next, x_base)
    else:
        assert_float32_close(x_base[:, 1:], 0.9 * x_next[:, 1:])
    np.testing.assert_array_equal(x_base[:, 0], x_expert[:, 0])
    grad = phi.grad(torch.from_numpy(x_t)).numpy()
    # x_t rebuilt as x_base / 0.9 for base_mean carries x_base's rounding, magnified by A's rows
    assert_float32_close((x_expert - x_base)[:, 1:], grad[:, 1:], scale=np.abs(x_base).max(), ulps=1024)


def test_window_mlp_uses_contiguous_blocks():
    """With model_horizon 2 over H 4, steps (0,1) and (2,3) form the blocks, not (0,2) and (1,3)."""
    torch.manual_seed(0)
    net = WindowMLPReward(horizon=4, transition_dim=1, model_horizon=2, hidden=[8], t_embed_dim=4)
    x = torch.zeros(1, 4, 1)
    t = torch.zeros(1, dtype=torch.long)
    base = net(x, t)
    x_pair = x.clone()
    x_pair[0, 0, 0], x_pair[0, 1, 0] = 1.0, 1.0  # both in the first block
    x_split = x.clone()
    x_split[0, 0, 0], x_split[0, 2, 0] = 1.0, 1.0  # one in each block
    # the first block's change alone, plus the second's, must add up for the split case
    only_first = x.clone()
    only_first[0, 0, 0] = 1.0
    only_third = x.clone()
    only_third[0, 2, 0] = 1.0
    separable = net(only_first, t) + net(only_third, t) - base
    torch.testing.assert_close(net(x_split, t), separable)
    with pytest.raises(ValueError, match="must divide"):
        WindowMLPReward(horizon=5, transition_dim=1, model_horizon=2)


def test_window_mlp_is_its_mlp_on_block_and_time_embedding():
    """The per-window time term of the first layer is an optimisation: the net is still
    MLP(cat[block, embed(t)]) per block, averaged, in value and in input-gradient."""
    torch.manual_seed(0)
    net = WindowMLPReward(horizon=8, transition_dim=3, model_horizon=2, hidden=[16, 8], t_embed_dim=6)
    x, t = torch.randn(4, 8, 3, requires_grad=True), torch.tensor([0, 1, 5, 9])

    def reference(x):
        blocks = x.reshape(4, 4, 6)
        temb = net.time(t)[:, None, :].expand(4, 4, -1)
        return net.mlp(torch.cat([blocks, temb], dim=-1)).squeeze(-1).mean(dim=1)

    torch.testing.assert_close(net(x, t), reference(x))
    torch.testing.assert_close(reward_gradient(net, x, t, create_graph=False),
                               torch.autograd.grad(reference(x).sum(), x)[0])


def test_value_unet_reward_supports_the_double_backward():
    net = build_reward_net(RewardSpec(kind="value_unet", unet_dim=16, unet_dim_mults=[1, 2]), 8, 5)
    x = torch.randn(3, 8, 5, requires_grad=True)
    grad = reward_gradient(net, x, torch.tensor([0, 3, 9]), create_graph=True)
    assert grad.shape == x.shape
    grad.pow(2).mean().backward()  # reaches the parameters through the input-gradient
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    with pytest.raises(ValueError, match="multiple of 32"):
        build_reward_net(RewardSpec(kind="value_unet", unet_dim=8, unet_dim_mults=[1, 2]), 8, 5)


def test_reward_run_resumes_from_its_checkpoint(ray_local, tmp_path):
    base, expert, _ = analytic_pair()
    pregenerate(base, expert, tmp_path / "s", PregenSpec(chains_per_kind=16, chains_per_shard=8, val_fraction=0.0),
                seed=0, progress=False)
    spec = RewardSpec(model_horizon=H, batch_size=32, train_steps=20, checkpoint_every=10, log_every=10)
    first = train_reward(tmp_path / "s", spec, ResourceSpec(), tmp_path / "runs", "resume")
    assert first.metrics["step"] == 20 and first.metrics["resumed_from_step"] == 0
    again = train_reward(tmp_path / "s", spec.model_copy(update={"train_steps": 40}), ResourceSpec(),
                         tmp_path / "runs", "resume")
    assert again.metrics["resumed_from_step"] == 20 and again.metrics["step"] == 40
    assert load_reward(again.checkpoint).step == 40
    finished = train_reward(tmp_path / "s", spec.model_copy(update={"train_steps": 40}), ResourceSpec(),
                            tmp_path / "runs", "resume")  # rebuilt after it finished: its final checkpoint
    assert finished.metrics["resumed_from_step"] == 40 and finished.metrics["step"] == 40
    assert np.isnan(finished.metrics["loss"]) and load_reward(finished.checkpoint).step == 40


def test_reward_of_chosen_columns_is_matched_only_on_them():
    """input_dims: rho ignores the other columns (zero gradient there), and the loss leaves them out."""
    from rrf_ray.rrf.reward_nets import alignment_terms

    net = build_reward_net(RewardSpec(input_dims=[2, 3], hidden=[16]), 8, 6)
    x = torch.randn(5, 8, 6)
    moved = x.clone()
    moved[..., [0, 1, 4, 5]] += 1.0
    torch.testing.assert_close(net(x, torch.zeros(5, dtype=torch.long)), net(moved, torch.zeros(5, dtype=torch.long)))
    grad = reward_gradient(net, x, torch.zeros(5, dtype=torch.long), create_graph=False)
    assert grad[..., [0, 1, 4, 5]].abs().max() == 0 and grad[..., [2, 3]].abs().max() > 0
    batch = {"x_next": x, "x_base": torch.zeros_like(x), "x_expert": torch.randn(5, 8, 6),
             "t": torch.zeros(5, dtype=torch.long)}
    loss, _, _ = alignment_terms(net, batch, "cpu", create_graph=False)
    expected = (grad[..., [2, 3]] - batch["x_expert"][..., [2, 3]]).pow(2).mean()
    torch.testing.assert_close(loss, expected)
    with pytest.raises(ValueError, match="columns 0..5"):
        build_reward_net(RewardSpec(input_dims=[6]), 8, 6)
    with pytest.raises(ValueError, match="window_mlp setting"):
        RewardSpec(kind="value_unet", input_dims=[2, 3])


@pytest.mark.parametrize("algorithm", ["pregenerate", "dataset_noising"])
def test_validation_shards_hold_no_window_of_a_training_episode(tmp_path, algorithm):
    """Through the one extraction path's window draw: training triples from training episodes, validation
    triples from held-out episodes only (each row records its source episode)."""
    from rrf_ray.data.windows import TrajectoryWindows
    from rrf_ray.rrf.extract import draw_windows

    base, expert, _ = analytic_pair()
    rng = np.random.default_rng(0)

    def episodes(first: int, n: int) -> TrajectoryWindows:  # n episodes of 3 windows each
        w = TrajectoryWindows.from_array(rng.uniform(-1, 1, size=(3 * n, H, D)).astype(np.float32), action_dim=0)
        w.episode_of_window = first + np.arange(3 * n) // 3
        return w

    data = {("base", "train"): episodes(0, 20), ("base", "heldout"): episodes(20, 3),
            ("expert", "train"): episodes(0, 10), ("expert", "heldout"): episodes(10, 2)}
    spec = PregenSpec(algorithm=algorithm, noising_source="mixed", chains_per_kind=40, chains_per_shard=10,
                      noised_windows=200, noised_per_shard=50, val_fraction=0.25)
    load = lambda role, split: data[role, split]  # noqa: E731
    draw = np.random.default_rng(1)
    train = draw_windows(load, spec, "train", draw)
    val = draw_windows(load, spec, "heldout", draw, like=train)
    for code in (1, 2):  # validation keeps the training mix of datasets, though held-out episodes are fewer
        assert (val.dataset == code).sum() == (train.dataset == code).sum()
    manifest = pregenerate(base, expert, tmp_path, spec, seed=0, train=train, val=val, progress=False,
                           in_process=True)
    assert manifest.rows("val") > 0 and manifest.rows("train") > 0
    seen = {split: pq.read_table(manifest.paths(tmp_path, split), columns=["source_dataset", "source_episode"])
            for split in ("train", "val")}
    for split, held_out in (("train", False), ("val", True)):
        for code, role in ((1, "base"), (2, "expert")):
            rows = seen[split]["source_dataset"].to_numpy() == code
            got = set(seen[split]["source_episode"].to_numpy()[rows])
            if algorithm == "pregenerate" and role == "expert":
                assert not got  # Algorithm 2 starts its chains from base windows only
                continue
            assert got, (split, role)
            want = set(data[role, "heldout" if held_out else "train"].episode_of_window)
            assert got <= want, (split, role, got - want)
            other = set(data[role, "train" if held_out else "heldout"].episode_of_window)
            assert not got & other


def test_conditioned_entries_contribute_no_loss(tmp_path):
    """The inpainted start state (target 0 by construction) is left out of the alignment loss: changing its
    target changes neither the loss nor the gradient of any weight; the manifest of conditioned triples says so."""
    from rrf_ray.rrf.reward_nets import alignment_terms, loss_mask

    manifest = pregenerate(AnalyticModel(H, 3, action_dim=1), AnalyticModel(H, 3, action_dim=1), tmp_path,
                           PregenSpec(chains_per_kind=4, chains_per_shard=4, val_fraction=0.0), seed=0,
                           train=WindowDraw(np.zeros((4, H, 3), np.float32), np.ones(4, np.int8), np.arange(4)),
                           progress=False, in_process=True)
    conditioned = torch.as_tensor(manifest.loss_mask())
    assert conditioned.shape == (H, 3) and not conditioned[0, 1:].any() and conditioned[0, 0] and conditioned[1:].all()

    torch.manual_seed(0)
    net = build_reward_net(RewardSpec(model_horizon=1, hidden=[16]), H, 3)
    mask = loss_mask((H, 3), None, conditioned, "cpu")  # as the trainer makes it, once per run
    x = torch.randn(6, H, 3)
    batch = {"x_next": x, "x_base": torch.zeros_like(x), "x_expert": torch.randn(6, H, 3),
             "t": torch.zeros(6, dtype=torch.long)}
    moved = dict(batch, x_expert=batch["x_expert"].clone())
    moved["x_expert"][:, 0, 1:] += 5.0  # only the conditioned entries' targets

    def loss_and_grads(b, m):
        net.zero_grad()
        loss, _, _ = alignment_terms(net, b, "cpu", create_graph=True, mask=m)
        loss.backward()
        return loss.detach(), [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in net.parameters()]

    loss, grads = loss_and_grads(batch, mask)
    loss_moved, grads_moved = loss_and_grads(moved, mask)
    torch.testing.assert_close(loss, loss_moved)
    for a, b in zip(grads, grads_moved):
        torch.testing.assert_close(a, b)
    unmasked, _ = loss_and_grads(batch, None)
    unmasked_moved, _ = loss_and_grads(moved, None)
    assert not torch.isclose(unmasked, unmasked_moved)  # without the mask, those entries pull on rho
