"""noiseprobe: noise in gradient-descent training.

Three layers (see docs/architecture.md): pure *theory* functions, replica-batched *simulation*
engines, and *experiments* that reproduce the figures and tables of the three papers.
"""

__version__ = "0.1.0"
