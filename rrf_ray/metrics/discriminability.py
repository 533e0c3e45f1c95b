"""Discriminability (docs/method.md, Evaluation): can the learned reward alone tell expert windows from base ones?

A 1-D logistic regression on the reward is fitted on one half of a balanced, shuffled
set of held-out windows and scored on the other half. (The authors scored it on the data
it was fitted to.) Each class is split in half separately, so both halves stay balanced
and the fit always sees both classes. The reward is standardised with the fitting half's
statistics first, so the default L2 penalty means the same for rewards of any scale.
"""

from __future__ import annotations

import numpy as np


def discriminability(base_rewards, expert_rewards, seed: int = 0) -> tuple[float, float]:
    """(accuracy, ROC AUC) on the held-out half; expert windows are the positive class."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    base = np.asarray(base_rewards, dtype=np.float64).reshape(-1)
    expert = np.asarray(expert_rewards, dtype=np.float64).reshape(-1)
    n = min(len(base), len(expert))
    if n < 2:
        raise ValueError(f"need at least 2 windows of each class, got {len(base)} base and {len(expert)} expert")
    for name, r in (("base", base), ("expert", expert)):
        if not np.all(np.isfinite(r)):
            raise ValueError(f"{name} rewards contain non-finite values")
    rng = np.random.default_rng(seed)
    base = rng.permutation(base)[:n]
    expert = rng.permutation(expert)[:n]
    half = n // 2
    x_fit = np.concatenate([base[:half], expert[:half]])
    y_fit = np.concatenate([np.zeros(half), np.ones(half)])
    x_test = np.concatenate([base[half:], expert[half:]])
    y_test = np.concatenate([np.zeros(n - half), np.ones(n - half)])
    order = rng.permutation(len(x_fit))
    x_fit, y_fit = x_fit[order], y_fit[order]

    mu, sd = x_fit.mean(), x_fit.std()
    sd = sd if sd > 0 else 1.0
    model = LogisticRegression()
    model.fit(((x_fit - mu) / sd)[:, None], y_fit)
    z_test = ((x_test - mu) / sd)[:, None]
    accuracy = float(np.mean(model.predict(z_test) == y_test))
    auc = float(roc_auc_score(y_test, model.decision_function(z_test)))
    return accuracy, auc
