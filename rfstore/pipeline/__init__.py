"""The pipeline: the stages (``pipeline/stages/``), their Dask tasks, and the ways to run them."""
