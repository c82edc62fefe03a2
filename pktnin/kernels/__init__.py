"""Compiled packet code: the capture reader and record walks (capture*.py, streams.py), the layout transform on
CPU (cpu.py) and GPU (cuda.py)."""
