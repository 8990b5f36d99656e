"""kacnum: Kac flows, the telegrapher equation and DistillKac few-step generation."""
__version__ = "0.1.0"
