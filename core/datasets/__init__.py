"""Sharded patch datasets: building them (planner and worker) and reading them back."""
