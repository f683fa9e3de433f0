"""The NumPy engine: hand-written forward/backward pairs per cell, never importing torch."""
