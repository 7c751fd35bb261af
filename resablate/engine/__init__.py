"""One training/evaluation run of one model on one dataset with one recipe."""
