"""Inverse RL with a single diffuser (thesis Algorithm 4) beside the relative reward, on Maze2D."""
