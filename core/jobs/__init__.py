"""File jobs: whole commands' work as library calls (unfold to a file, fold one back, tiles, estimates)."""
