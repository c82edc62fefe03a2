"""The package's version, in a module of its own: modules that record it need not import the package root
(whose lazy attributes reach the whole API)."""

__version__ = "0.1.0"
