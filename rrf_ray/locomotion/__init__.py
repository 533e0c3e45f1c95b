"""Locomotion steering (docs/locomotion.md): base and expert diffusers from local Minari datasets,
a relative reward (and a discriminator baseline) that steers the base planner, and a Tune
search over the guidance scale scored by D4RL-normalised returns in MuJoCo v5 environments."""
