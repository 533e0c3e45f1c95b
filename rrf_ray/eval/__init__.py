"""Maze2D evaluation (SPEC section 4): reward heatmaps, automatic goal recovery,
discriminability and ERC, all on held-out windows, and one call that does a whole trial."""

from rrf_ray.eval.discriminability import discriminability
from rrf_ray.eval.erc import erc, true_maze_return
from rrf_ray.eval.goal_recovery import GoalRecovery, rate_with_interval, recover_goal
from rrf_ray.eval.heatmap import Heatmap, plot_heatmap, reward_heatmap
from rrf_ray.eval.trial import TrialMetrics, evaluate_reward

__all__ = [
    "GoalRecovery", "Heatmap", "TrialMetrics", "discriminability", "erc", "evaluate_reward",
    "plot_heatmap", "rate_with_interval", "recover_goal", "reward_heatmap", "true_maze_return",
]
