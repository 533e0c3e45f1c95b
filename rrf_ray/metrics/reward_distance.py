"""Reward distances beside ERC that do not see potential shaping: EPIC and STARC.

ERC (`rrf_ray.metrics.erc`) is the Pearson distance of *returns* over a coverage set. Potential
shaping R'(s, a, s') = R(s, a, s') + γΦ(s') − Φ(s) changes no optimal policy, yet it moves the
return of a window from s_0 to s_T by γ^T Φ(s_T) − Φ(s_0): ERC calls R and R' different unless
start and end potentials match, and its value depends on which windows the coverage set holds.

EPIC (Gleave, Dennis, Legg, Russell, Leike, "Quantifying Differences in Reward Functions",
ICLR 2021, arXiv:2006.13900) first maps each reward to a canonical representative of its shaping
class,

    C(R)(s, a, s') = R(s, a, s') + E[γ R(s', A, S') − R(s, A, S') − γ R(S, A, S')],

S, S' ~ D_S and A ~ D_A independent, so C(R + shaping) = C(R) (and constant shifts vanish too), then
takes the Pearson distance sqrt((1 − ρ) / 2) of C(R_a) and C(R_b) over a coverage distribution of
transitions: 0 for equivalent rewards, sqrt(1/2) for uncorrelated ones, 1 for opposite ones;
invariant to positive scaling.

STARC (Skalse, Farnik, Motwani, Jenner, Gleave, Abate, "STARC: A General Framework For Quantifying
Differences Between Reward Functions", ICLR 2024, arXiv:2309.15257) canonicalises (here with EPIC's
canonicalisation), normalises (divides by the L2 norm over the coverage samples) and measures the L2
distance of the normalised rewards, halved to lie in [0, 1]. With unit vectors that is
sqrt((1 − cos) / 2): EPIC with the uncentred cosine in place of ρ, the two coinciding where the
canonicalised rewards average to zero over the coverage.

Both still depend on the coverage (where rewards are compared) and on D_S, D_A (the canonical
sample), so both are explicit arguments: `Transitions` and `CanonicalSample`. The expectations are
Monte-Carlo means over the given samples, the same draws for every reward (fixed by `seed`), so
shaping cancels exactly, not only in expectation. Bootstrap intervals resample coverage transitions,
the two canonicalised vectors in pairs; the canonical sample is held fixed.

Rewards here are callables on batched transitions, R(s, a, s') -> (N,), evaluated in float64 on CPU
(wrap a float32 network: `lambda s, a, s2: net(s.float(), ...).double()`). Rewards defined only on
whole plans (a window's score) have no per-transition form to canonicalise: compare those at the
return level with ERC.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from rrf_ray.metrics.aggregate import BOOTSTRAP_REPS, Estimate

TransitionReward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

N_MEAN_SAMPLES = 1024  # (A, S') draws per expectation: the full product of the canonical sample if smaller
CHUNK_ROWS = 2**17  # transitions per reward call while averaging over the draws
FLAT_RTOL = 1e-9  # a canonicalised reward this small against its summands is zero up to rounding


def _as_float64(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(x).detach().to(device="cpu", dtype=torch.float64)
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, features), got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains non-finite values")
    return t


@dataclass(frozen=True)
class Transitions:
    """The coverage: transitions (s, a, s') on which two rewards are compared, e.g. held-out base or
    expert windows, or uniform over free maze cells. Tensors become float64 on CPU."""

    s: torch.Tensor  # (N, ds)
    a: torch.Tensor  # (N, da); da may be 0
    s_next: torch.Tensor  # (N, ds)

    def __post_init__(self):
        for name in ("s", "a", "s_next"):
            object.__setattr__(self, name, _as_float64(getattr(self, name), name))
        n = len(self.s)
        if n == 0 or len(self.a) != n or len(self.s_next) != n:
            raise ValueError(f"s, a, s_next need the same number of rows (>= 1), got {len(self.s)}, "
                             f"{len(self.a)}, {len(self.s_next)}")
        if self.s.shape[1] != self.s_next.shape[1]:
            raise ValueError(f"s and s_next need the same state width, got {self.s.shape[1]} and "
                             f"{self.s_next.shape[1]}")

    def __len__(self) -> int:
        return len(self.s)

    @classmethod
    def from_windows(cls, states, actions) -> Transitions:
        """All consecutive transitions of windows: states (B, T, ds), actions (B, T, da) or (B, T - 1, da)
        (the action at t leads from states[:, t] to states[:, t + 1]; a last action is ignored)."""
        states, actions = torch.as_tensor(states), torch.as_tensor(actions)
        if states.ndim != 3 or actions.ndim != 3 or states.shape[1] < 2:
            raise ValueError(f"windows need states (B, T >= 2, ds) and actions (B, T or T - 1, da), got "
                             f"{tuple(states.shape)} and {tuple(actions.shape)}")
        b, t = states.shape[:2]
        if actions.shape[0] != b or actions.shape[1] not in (t, t - 1):
            raise ValueError(f"actions {tuple(actions.shape)} do not match states {tuple(states.shape)}: "
                             f"need ({b}, {t} or {t - 1}, da)")
        n, ds, da = b * (t - 1), states.shape[2], actions.shape[2]
        return cls(states[:, :-1].reshape(n, ds), actions[:, :t - 1].reshape(n, da), states[:, 1:].reshape(n, ds))


@dataclass(frozen=True)
class CanonicalSample:
    """Samples of D_S and D_A, the distributions EPIC's canonicalisation averages over. Where to put
    them is a choice (the paper leaves it open); `from_coverage` is the default here: the coverage's
    own states s and actions a, i.e. shaping is removed relative to where rewards are compared."""

    states: torch.Tensor  # (M, ds)
    actions: torch.Tensor  # (K, da)

    def __post_init__(self):
        for name in ("states", "actions"):
            t = _as_float64(getattr(self, name), name)
            if len(t) == 0:
                raise ValueError(f"canonical {name} need at least one row")
            object.__setattr__(self, name, t)

    @classmethod
    def from_coverage(cls, coverage: Transitions) -> CanonicalSample:
        return cls(coverage.s, coverage.a)


def lift_state_reward(r: Callable[[torch.Tensor], torch.Tensor]) -> TransitionReward:
    """R(s, a, s') = r(s'): a state reward as the reward of *arriving* in a state, so a window's
    transitions sum it over every state but the first."""
    return lambda s, a, s_next: r(s_next)


def lift_state_action_reward(r: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> TransitionReward:
    """R(s, a, s') = r(s, a): a reward of acting, blind to where the action leads."""
    return lambda s, a, s_next: r(s, a)


def _evaluate(reward: TransitionReward, s: torch.Tensor, a: torch.Tensor, s_next: torch.Tensor) -> torch.Tensor:
    """reward(s, a, s') as a float64 (N,) tensor; a reward of any other shape would broadcast silently."""
    n = len(s)
    out = reward(s, a, s_next)
    out = torch.as_tensor(out).detach().to(device="cpu", dtype=torch.float64)
    if out.shape != (n,):
        raise ValueError(f"reward returned shape {tuple(out.shape)} for {n} transitions; it must return ({n},)")
    if not torch.isfinite(out).all():
        raise ValueError("reward returned non-finite values")
    return out


def _check(coverage: Transitions, canonical: CanonicalSample, gamma: float) -> None:
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
    ds, da = coverage.s.shape[1], coverage.a.shape[1]
    if canonical.states.shape[1] != ds or canonical.actions.shape[1] != da:
        raise ValueError(f"canonical sample widths (states {canonical.states.shape[1]}, actions "
                         f"{canonical.actions.shape[1]}) differ from the transitions' ({ds}, {da})")


def _draws(canonical: CanonicalSample, n_mean_samples: int, seed: int):
    """(S, A, S') triples for the expectations. All M·K pairs (A, S') where that is at most
    n_mean_samples, else that many independent seeded draws. S is S' shifted to another draw: an
    independent state whose empirical mean equals S''s, which makes shaping cancel exactly."""
    if n_mean_samples < 1:
        raise ValueError(f"n_mean_samples must be >= 1, got {n_mean_samples}")
    m, k = len(canonical.states), len(canonical.actions)
    if m * k <= n_mean_samples:
        s_idx = torch.arange(m).repeat_interleave(k)
        a_idx = torch.arange(k).repeat(m)
        shift = k
    else:
        g = torch.Generator().manual_seed(seed)
        s_idx = torch.randint(m, (n_mean_samples,), generator=g)
        a_idx = torch.randint(k, (n_mean_samples,), generator=g)
        shift = 1
    return canonical.states[s_idx.roll(shift)], canonical.actions[a_idx], canonical.states[s_idx]


def _mean_over_draws(reward, x, a_j, sn_j, chunk_rows: int) -> torch.Tensor:
    """E_j R(x_i, A_j, S'_j) for every row x_i, in chunks of at most chunk_rows reward evaluations."""
    p = len(a_j)
    step = max(1, chunk_rows // p)
    out = []
    for i in range(0, len(x), step):
        xi = x[i:i + step]
        r = _evaluate(reward, xi.repeat_interleave(p, 0), a_j.repeat(len(xi), 1), sn_j.repeat(len(xi), 1))
        out.append(r.view(len(xi), p).mean(1))
    return torch.cat(out)


def _canonicalize(reward, coverage: Transitions, canonical: CanonicalSample, gamma: float,
                  n_mean_samples: int, seed: int, chunk_rows: int) -> tuple[torch.Tensor, float]:
    """C(R) on the coverage and the largest summand (the scale its rounding error is relative to)."""
    _check(coverage, canonical, gamma)
    with torch.no_grad():
        s_j, a_j, sn_j = _draws(canonical, n_mean_samples, seed)
        raw = _evaluate(reward, coverage.s, coverage.a, coverage.s_next)
        # s' of one transition is often s of the next: average once per distinct state.
        x, inverse = torch.unique(torch.cat([coverage.s, coverage.s_next]), dim=0, return_inverse=True)
        mean = _mean_over_draws(reward, x, a_j, sn_j, chunk_rows)[inverse]
        n = len(coverage)
        mean_s, mean_next = mean[:n], mean[n:]
        const = _evaluate(reward, s_j, a_j, sn_j).mean()
        c = raw + gamma * mean_next - mean_s - gamma * const
        scale = max(raw.abs().max().item(), mean.abs().max().item(), const.abs().item())
    return c, scale


def epic_canonicalize(reward: TransitionReward, s, a, s_next, states, actions, gamma: float, *,
                      n_mean_samples: int = N_MEAN_SAMPLES, seed: int = 0,
                      chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """C(R)(s, a, s') (N,) float64: R plus E[γR(s', A, S') − R(s, A, S') − γR(S, A, S')], S, S' drawn from
    `states` and A from `actions` independently (see `_draws`). gamma is required: C removes shaping
    γΦ(s') − Φ(s) only for the γ it is given (the episodic maze rewards here use γ = 1)."""
    coverage = Transitions(s, a, s_next)
    return _canonicalize(reward, coverage, CanonicalSample(states, actions), gamma, n_mean_samples, seed,
                         chunk_rows)[0]


def _pearson_distance(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    xc = x - x.mean(axis=axis, keepdims=True)
    yc = y - y.mean(axis=axis, keepdims=True)
    sxx, syy = (xc * xc).sum(axis), (yc * yc).sum(axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.clip((xc * yc).sum(axis) / np.sqrt(sxx * syy), -1.0, 1.0)
    return np.sqrt((1.0 - rho) / 2.0)  # NaN where a vector is constant: rho undefined


def _starc_distance(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        u = x / np.linalg.norm(x, axis=axis, keepdims=True)
        v = y / np.linalg.norm(y, axis=axis, keepdims=True)
    return np.linalg.norm(u - v, axis=axis) / 2.0


def _vectors(x, y) -> tuple[np.ndarray, np.ndarray]:
    x = torch.as_tensor(x).detach().cpu().double().numpy().reshape(-1)
    y = torch.as_tensor(y).detach().cpu().double().numpy().reshape(-1)
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"need two equally long vectors of 2+ values, got {x.shape} and {y.shape}")
    return x, y


def pearson_distance(x, y) -> float:
    """sqrt((1 − ρ) / 2) in [0, 1]: 0 for perfectly, sqrt(1/2) for un-, 1 for anti-correlated vectors;
    NaN where either is constant (ρ undefined). The same formula as ERC, on any two vectors."""
    return float(_pearson_distance(*_vectors(x, y)))


def normalized_l2_distance(x, y) -> float:
    """||x/||x|| − y/||y|||| / 2 in [0, 1] (STARC's normalise-then-measure step); NaN for a zero vector."""
    return float(_starc_distance(*_vectors(x, y)))


def _canonical_pair(reward_a, reward_b, coverage, canonical, gamma, n_mean_samples, seed, chunk_rows, flat):
    """Both rewards canonicalised with the same draws; NaN vectors for a reward that is zero after
    canonicalisation up to rounding (pure shaping, a constant): it has no direction to compare."""
    canonical = CanonicalSample.from_coverage(coverage) if canonical is None else canonical
    out = []
    for reward in (reward_a, reward_b):
        c, scale = _canonicalize(reward, coverage, canonical, gamma, n_mean_samples, seed, chunk_rows)
        c = c.numpy()
        out.append(np.full_like(c, np.nan) if flat(c) <= FLAT_RTOL * scale else c)
    return out


def _std(c: np.ndarray) -> float:
    return float(c.std())


def _rms(c: np.ndarray) -> float:
    return float(np.sqrt(np.mean(c * c)))


def epic_distance(reward_a: TransitionReward, reward_b: TransitionReward, coverage: Transitions,
                  canonical: CanonicalSample | None = None, *, gamma: float,
                  n_mean_samples: int = N_MEAN_SAMPLES, seed: int = 0, chunk_rows: int = CHUNK_ROWS) -> float:
    """EPIC: Pearson distance of C(R_a) and C(R_b) over the coverage transitions, canonicalised over
    `canonical` (default: the coverage's states and actions). NaN where a reward canonicalises to a
    constant (e.g. it is pure shaping)."""
    x, y = _canonical_pair(reward_a, reward_b, coverage, canonical, gamma, n_mean_samples, seed, chunk_rows, _std)
    return float(_pearson_distance(x, y))


def starc_distance(reward_a: TransitionReward, reward_b: TransitionReward, coverage: Transitions,
                   canonical: CanonicalSample | None = None, *, gamma: float,
                   n_mean_samples: int = N_MEAN_SAMPLES, seed: int = 0, chunk_rows: int = CHUNK_ROWS) -> float:
    """STARC: EPIC canonicalisation, each divided by its L2 norm over the coverage, L2 distance halved
    into [0, 1]. NaN where a reward canonicalises to zero."""
    x, y = _canonical_pair(reward_a, reward_b, coverage, canonical, gamma, n_mean_samples, seed, chunk_rows, _rms)
    return float(_starc_distance(x, y))


def _paired_bootstrap(statistic, x: np.ndarray, y: np.ndarray, reps: int, seed: int) -> Estimate:
    """Point value of statistic(x, y) and a 95% BCa interval from resampling the pairs (x_i, y_i)."""
    n = len(x)
    value = float(statistic(x, y))
    if not np.isfinite(value) or n < 3:
        return Estimate(value, float("nan"), float("nan"), n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)  # handled below
        res = stats.bootstrap((x, y), statistic, paired=True, vectorized=True, n_resamples=reps,
                              confidence_level=0.95, method="BCa", batch=max(1, 2**22 // n),
                              random_state=np.random.default_rng(seed))
    spread = np.ptp(res.bootstrap_distribution)
    if np.isfinite(spread) and spread <= 1e-9:  # equal up to rounding on every resample
        return Estimate(value, value, value, n)
    return Estimate(value, float(res.confidence_interval.low), float(res.confidence_interval.high), n)


def epic_estimate(reward_a: TransitionReward, reward_b: TransitionReward, coverage: Transitions,
                  canonical: CanonicalSample | None = None, *, gamma: float,
                  n_mean_samples: int = N_MEAN_SAMPLES, seed: int = 0, chunk_rows: int = CHUNK_ROWS,
                  reps: int = BOOTSTRAP_REPS) -> Estimate:
    """`epic_distance` with a seeded 95% bootstrap interval (scipy, BCa, paired resampling of the
    coverage transitions; the canonical sample stays fixed). n is the number of coverage transitions."""
    x, y = _canonical_pair(reward_a, reward_b, coverage, canonical, gamma, n_mean_samples, seed, chunk_rows, _std)
    return _paired_bootstrap(_pearson_distance, x, y, reps, seed)


def starc_estimate(reward_a: TransitionReward, reward_b: TransitionReward, coverage: Transitions,
                   canonical: CanonicalSample | None = None, *, gamma: float,
                   n_mean_samples: int = N_MEAN_SAMPLES, seed: int = 0, chunk_rows: int = CHUNK_ROWS,
                   reps: int = BOOTSTRAP_REPS) -> Estimate:
    """`starc_distance` with the same seeded paired bootstrap as `epic_estimate`."""
    x, y = _canonical_pair(reward_a, reward_b, coverage, canonical, gamma, n_mean_samples, seed, chunk_rows, _rms)
    return _paired_bootstrap(_starc_distance, x, y, reps, seed)


# -- rewards of diffuser windows ---------------------------------------------------------------

def state_reward_of_windows(score: Callable[[np.ndarray], np.ndarray], normalizer, action_dim: int):
    """r(s) for states (N, ds) in environment units, from `score`, a reward of normalised windows
    [a | s] (N, H, D) -> (N,) that sums or averages one function of each row (a window net of the state,
    AIRL's g): the score of the one-row window [0 | s]. EPIC and STARC do not see the positive factor
    between a sum and a mean. A reward of whole plans has no such form: compare it by ERC."""
    shift = np.asarray(normalizer.shift, dtype=np.float64)
    scale = np.asarray(normalizer.scale, dtype=np.float64)

    def r(states: torch.Tensor) -> torch.Tensor:
        s = states.detach().cpu().numpy().astype(np.float64)
        rows = np.concatenate([np.zeros((len(s), action_dim)), s], axis=1)
        x = ((rows - shift) / scale).astype(np.float32)[:, None, :]
        return torch.as_tensor(np.asarray(score(x), dtype=np.float64).reshape(-1))

    return r


def window_transitions(windows, idx: np.ndarray, seed: int) -> Transitions:
    """One transition (s, a, s') drawn from each of the diffuser windows `idx` (seeded), in environment
    units: spread over the windows' episodes, few enough for a BCa bootstrap."""
    x = windows.batch(idx)
    raw = windows.normalizer.unnormalize(x) if windows.normalizer is not None else x
    a = windows.action_dim
    t = np.random.default_rng([seed, 0xE91C]).integers(raw.shape[1] - 1, size=len(idx))
    rows = np.arange(len(idx))
    return Transitions(raw[rows, t, a:], raw[rows, t, :a], raw[rows, t + 1, a:])


def distances_to_truth(learned_state_reward, true_state_reward, coverage: Transitions, *, gamma: float,
                       seed: int = 0, reps: int = BOOTSTRAP_REPS) -> dict:
    """EPIC and STARC with their 95% intervals between two state rewards, each as the reward of arriving
    in s' (`lift_state_reward`), over `coverage` (its own states and actions the canonical sample):
    {epic, epic_low, epic_high, starc, starc_low, starc_high, reward_distance_transitions}."""
    learned, truth = lift_state_reward(learned_state_reward), lift_state_reward(true_state_reward)
    out = {"reward_distance_transitions": len(coverage.s)}
    for name, estimate in (("epic", epic_estimate), ("starc", starc_estimate)):
        e = estimate(learned, truth, coverage, gamma=gamma, seed=seed, reps=reps)
        out.update({name: e.value, f"{name}_low": e.low, f"{name}_high": e.high})
    return out
