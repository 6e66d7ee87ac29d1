"""Analysis of a run folder: per-configuration statistics, the recommendation and its reasons."""
