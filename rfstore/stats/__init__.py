"""Running statistics and scores: top-K, quantiles, spatial summaries, IoU tallies."""
