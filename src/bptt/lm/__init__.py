"""The language-model job: train, evaluate, generate, checkpoint."""
