"""The language-model job: train, evaluate, generate (checkpoint files: bptt.checkpoint)."""
