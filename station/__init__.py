"""Field Station: a continuous bird-sound monitor."""

__version__ = "0.1.0"
