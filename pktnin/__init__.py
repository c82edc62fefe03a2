"""pktnin: packet-level encrypted traffic classification with deep and parallel Network-in-Network models."""

__version__ = "0.1.0"
