"""bptt: recurrent networks with hand-derived backpropagation through time."""

__version__ = "0.1.0"
