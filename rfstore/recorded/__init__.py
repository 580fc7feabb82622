"""What a store records about its network and its stages: read back, typed, below the stages and the readers."""
