"""Compiled packet code: the capture record walk (capture.py), the layout transform on CPU (cpu.py) and GPU (cuda.py)."""
