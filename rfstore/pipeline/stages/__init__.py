"""The stages, one module each: its config, its run and its cluster task."""
