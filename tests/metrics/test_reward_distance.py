"""EPIC and STARC reward distances (rrf_ray/metrics/reward_distance.py): invariances, calibration, intervals.

The toy world: states (4,) ~ N(0, I) in two independent blocks (coordinates 0-1 driven by action 0,
coordinates 2-3 by action 1). A reward of one block is, over such transitions, independent of a reward
of the other block: their population correlation is exactly 0, which calibrates the distances.
"""

import math

import pytest
import torch

from rrf_ray.metrics.erc import erc
from rrf_ray.metrics.reward_distance import (
    CanonicalSample,
    Transitions,
    epic_canonicalize,
    epic_distance,
    epic_estimate,
    lift_state_action_reward,
    lift_state_reward,
    normalized_l2_distance,
    pearson_distance,
    starc_distance,
    starc_estimate,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small tensors (tests/conftest.py)

DS, DA = 4, 2
BLOCKS = {"A": (slice(0, 2), slice(0, 1)), "B": (slice(2, 4), slice(1, 2))}  # state, action columns
F64 = torch.float64
REPS = 500  # bootstrap resamples: enough for stable 95% bounds in a test
# (A, S') draws per expectation: fewer than the default, for speed. Shaping cancels exactly with any
# number of draws, and the independent rewards stay uncorrelated given the draws.
DRAWS = 64
KW = {"gamma": 1.0, "n_mean_samples": DRAWS}


def step(s, a, g):
    """s' = s + 0.5 tanh(a) per block + noise: each block moves with its own action only."""
    drift = 0.5 * torch.tanh(a).repeat_interleave(2, dim=1)
    return s + drift + 0.1 * torch.randn(s.shape, generator=g, dtype=F64)


def coverage(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, DS, generator=g, dtype=F64)
    a = torch.randn(n, DA, generator=g, dtype=F64)
    return Transitions(s, a, step(s, a, g))


def windows(b, t, seed=0):
    """b random trajectories of t steps: states (b, t + 1, DS), actions (b, t, DA)."""
    g = torch.Generator().manual_seed(seed)
    states = [torch.randn(b, DS, generator=g, dtype=F64)]
    actions = torch.randn(b, t, DA, generator=g, dtype=F64)
    for i in range(t):
        states.append(step(states[-1], actions[:, i], g))
    return torch.stack(states, 1), actions


def block_reward(block, seed, hidden=16):
    """A random tanh-feature reward of one block's (s, a, s')."""
    cols, acol = BLOCKS[block]
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(5, hidden, generator=g, dtype=F64) / math.sqrt(5)
    b = torch.randn(hidden, generator=g, dtype=F64)
    v = torch.randn(hidden, generator=g, dtype=F64) / math.sqrt(hidden)

    def reward(s, a, s_next):
        z = torch.cat([s[:, cols], a[:, acol], s_next[:, cols]], dim=1)
        return torch.tanh(z @ w + b) @ v

    return reward


def potential(seed=7, amplitude=3.0):
    """Φ(s): random sine features of all coordinates, large against the rewards."""
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(DS, 8, generator=g, dtype=F64)
    q = torch.randn(8, generator=g, dtype=F64) / math.sqrt(8)
    return lambda s: amplitude * torch.sin(s @ p) @ q


def shaped(reward, phi, gamma):
    return lambda s, a, s_next: reward(s, a, s_next) + gamma * phi(s_next) - phi(s)


R = block_reward("A", seed=1)
OTHER = block_reward("B", seed=2)  # independent of R over the toy transitions


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_epic_ignores_potential_shaping_that_erc_sees(gamma):
    """R and R + γΦ(s') − Φ(s): EPIC ≈ 0 on the windows' transitions, while ERC (the existing `erc`, the
    Pearson distance of returns) of the same 4-step windows is large: their start and end potentials differ."""
    shaped_r = shaped(R, potential(), gamma)
    states, actions = windows(250, 4)
    cov = Transitions.from_windows(states, actions)
    assert len(cov) == 1000
    discount = gamma ** torch.arange(4, dtype=F64)
    returns = [(r(cov.s, cov.a, cov.s_next).view(250, 4) * discount).sum(1) for r in (R, shaped_r)]
    assert erc(returns[1].numpy(), returns[0].numpy()) > 0.2
    assert epic_distance(R, shaped_r, cov, gamma=gamma, n_mean_samples=DRAWS) < 0.02
    assert starc_distance(R, shaped_r, cov, gamma=gamma, n_mean_samples=DRAWS) < 0.02
    # another γ leaves shaping in: canonicalisation removes only the shaping of its own γ
    assert epic_distance(R, shaped_r, cov, gamma=1.0 if gamma < 1 else 0.5, n_mean_samples=DRAWS) > 0.05


@pytest.mark.parametrize("transform, expected", [
    (lambda r: (lambda s, a, s2: 3.0 * r(s, a, s2)), 0.0),
    (lambda r: (lambda s, a, s2: r(s, a, s2) + 5.0), 0.0),
    (lambda r: (lambda s, a, s2: -r(s, a, s2)), 1.0),
], ids=["scaled", "shifted", "negated"])
def test_epic_and_starc_ignore_scale_and_shift_and_flip_for_negation(transform, expected):
    """3R and R + 5 are the same reward for every purpose (0); -R is its opposite (1)."""
    cov = coverage(300)
    other = transform(R)
    assert epic_distance(R, other, cov, **KW) == pytest.approx(expected, abs=1e-6)
    assert starc_distance(R, other, cov, **KW) == pytest.approx(expected, abs=1e-6)


def test_epic_of_independent_rewards_is_sqrt_one_half():
    """ρ of independent rewards over N transitions is ≈ N(0, 1/N), so EPIC = sqrt((1 − ρ)/2) lies within
    |dEPIC/dρ| = 1/(4 sqrt(1/2)) ≈ 0.354 times 4/sqrt(N) of sqrt(1/2) (4 standard errors)."""
    n = 4000
    value = epic_distance(R, OTHER, coverage(n, seed=3), **KW)
    assert abs(value - math.sqrt(0.5)) < 4 * 0.354 / math.sqrt(n), value


def test_starc_and_epic_order_planted_noise_levels():
    """R vs R + 0.3 N, R + 1.5 N and N (N independent of R): both distances grow in that order, and
    STARC, like EPIC, gives shaping ≈ 0."""
    cov = coverage(500, seed=4)
    candidates = [lambda s, a, s2, lam=lam: R(s, a, s2) + lam * OTHER(s, a, s2) for lam in (0.3, 1.5)] + [OTHER]
    for distance in (epic_distance, starc_distance):
        values = [distance(R, c, cov, **KW) for c in candidates]
        assert 0.02 < values[0] < values[1] < values[2], (distance.__name__, values)
    assert starc_distance(R, shaped(R, potential(), 1.0), cov, **KW) < 0.02


def test_canonicalisation_matches_the_definition():
    """Against EPIC's formula by loops over all (A, S') pairs: exact with the full product of a small
    canonical sample (up to the constant E R(S, A, S'), estimated from fewer triples), and within Monte-Carlo
    error with 4000 random draws from a larger one. γ < 1 so a misplaced γ shows."""
    gamma, reward = 0.9, block_reward("A", seed=5)
    cov = coverage(5, seed=6)

    def reference(states, actions):
        m, k = len(states), len(actions)
        ia, i2 = torch.cartesian_prod(torch.arange(k), torch.arange(m)).T  # every (A, S') pair

        def mean(x):
            return reward(x.expand(k * m, -1), actions[ia], states[i2]).mean()

        i1, ia3, i3 = torch.cartesian_prod(torch.arange(m), torch.arange(k), torch.arange(m)).T
        const = reward(states[i1], actions[ia3], states[i3]).mean()
        return torch.cat([reward(s[None], a[None], s2[None]) + gamma * mean(s2) - mean(s) - gamma * const
                          for s, a, s2 in zip(cov.s, cov.a, cov.s_next)])

    small = coverage(3, seed=8)
    exact = epic_canonicalize(reward, cov.s, cov.a, cov.s_next, small.s, small.a, gamma)
    diff = exact - reference(small.s, small.a)
    assert diff.max() - diff.min() < 1e-12

    big = coverage(50, seed=9)
    actions = big.a[:40]  # 50 · 40 = 2000 pairs > 1000 draws: the random-draw path
    drawn = epic_canonicalize(reward, cov.s, cov.a, cov.s_next, big.s, actions, gamma, n_mean_samples=1000)
    diff = drawn - reference(big.s, actions)
    raw = reward(cov.s, cov.a, cov.s_next)
    assert (diff - diff.mean()).abs().max() < 0.1 * raw.std(), (diff, raw.std())


def test_lifted_rewards_and_float32_input():
    """A state reward is the reward of arriving (r(s')); a state-action reward ignores s'; float32 input
    is computed in float64."""
    cov = coverage(6, seed=10)
    r_state = lift_state_reward(lambda s: s[:, 0])
    r_sa = lift_state_action_reward(lambda s, a: s[:, 1] * a[:, 0])
    torch.testing.assert_close(r_state(cov.s, cov.a, cov.s_next), cov.s_next[:, 0])
    torch.testing.assert_close(r_sa(cov.s, cov.a, cov.s_next), cov.s[:, 1] * cov.a[:, 0])
    c32 = Transitions(cov.s.float(), cov.a.float(), cov.s_next.float())
    assert c32.s.dtype == torch.float64
    c = epic_canonicalize(r_sa, c32.s, c32.a, c32.s_next, c32.s, c32.a, 1.0)
    assert c.dtype == torch.float64 and c.shape == (6,)
    # r(s') and r(s) differ by the shaping γΦ(s') − Φ(s) with Φ = r, γ = 1: EPIC-equivalent
    assert epic_distance(r_state, lift_state_action_reward(lambda s, a: s[:, 0]), coverage(500), **KW) < 1e-6


def test_a_reward_that_is_pure_shaping_has_no_epic_distance():
    """C(γΦ(s') − Φ(s)) = 0: no direction to correlate, NaN (the caller counts it), not rounding noise."""
    cov = coverage(300, seed=11)
    pure = shaped(lambda s, a, s2: torch.zeros(len(s), dtype=F64), potential(), 1.0)
    assert math.isnan(epic_distance(R, pure, cov, **KW))
    assert math.isnan(starc_distance(R, pure, cov, **KW))


def test_bootstrap_interval_contains_point_is_seeded_and_narrows_with_coverage():
    """8x the coverage should shrink the interval by about sqrt(8) ≈ 2.8; asserted: by more than 1/0.6."""
    noisy = lambda s, a, s2: R(s, a, s2) + OTHER(s, a, s2)  # noqa: E731
    small, large = coverage(125, seed=12), coverage(1000, seed=13)
    est = epic_estimate(R, noisy, large, reps=REPS, **KW, seed=0)
    assert est.n == 1000
    assert est.low < est.value < est.high
    assert est.value == pytest.approx(epic_distance(R, noisy, large, **KW))
    assert epic_estimate(R, noisy, large, reps=REPS, **KW, seed=0) == est
    assert epic_estimate(R, noisy, large, reps=REPS, **KW, seed=1) != est
    est_small = epic_estimate(R, noisy, small, reps=REPS, **KW, seed=0)
    assert (est.high - est.low) < 0.6 * (est_small.high - est_small.low), (est, est_small)

    starc = starc_estimate(R, noisy, large, reps=REPS, **KW, seed=0)
    assert starc.low < starc.value < starc.high
    assert starc.value == pytest.approx(starc_distance(R, noisy, large, **KW))


def test_vector_distances():
    x = torch.arange(10, dtype=F64)
    assert pearson_distance(x, 2 * x + 1) == pytest.approx(0.0, abs=1e-7)
    assert pearson_distance(x, -x) == pytest.approx(1.0)
    assert math.isnan(pearson_distance(x, torch.ones(10)))
    assert normalized_l2_distance(x, 3 * x) == pytest.approx(0.0, abs=1e-7)
    assert normalized_l2_distance(x, -x) == pytest.approx(1.0)
    assert normalized_l2_distance(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])) == pytest.approx(
        math.sqrt(0.5))


def _bad(case):
    cov = coverage(8)
    s, a, s2 = cov.s, cov.a, cov.s_next
    if case == "rows":
        Transitions(s, a[:7], s2)
    elif case == "width":
        Transitions(s, a, s2[:, :3])
    elif case == "ndim":
        Transitions(s[:, 0], a, s2)
    elif case == "reward_shape":
        epic_distance(R, lambda s, a, s2: R(s, a, s2)[:, None], cov, **KW)
    elif case == "reward_rows":
        epic_distance(R, lambda s, a, s2: R(s, a, s2)[1:], cov, **KW)
    elif case == "canonical":
        epic_distance(R, OTHER, cov, CanonicalSample(s[:, :3], a), gamma=1.0)
    elif case == "gamma":
        epic_distance(R, OTHER, cov, gamma=1.5)
    elif case == "windows":
        Transitions.from_windows(torch.zeros(2, 5, DS), torch.zeros(2, 3, DA))
    elif case == "vectors":
        pearson_distance(torch.zeros(5), torch.zeros(4))


@pytest.mark.parametrize("case, message", [
    ("rows", "same number of rows"),
    ("width", "same state width"),
    ("ndim", "must be 2-D"),
    ("reward_shape", r"reward returned shape \(8, 1\) for 8 transitions"),
    ("reward_rows", r"reward returned shape \(7,\)"),
    ("canonical", "canonical sample widths"),
    ("gamma", "gamma must lie in"),
    ("windows", "do not match"),
    ("vectors", "equally long"),
])
def test_bad_input_raises_a_value_error_that_names_it(case, message):
    with pytest.raises(ValueError, match=message):
        _bad(case)
