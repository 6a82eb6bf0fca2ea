"""Training callbacks: throughput, generated text samples, Newton solver statistics."""
from .solver_stats import SolverStats
from .text_samples import TextSamples
from .throughput import Throughput, peak_memory_mb

__all__ = ["SolverStats", "TextSamples", "Throughput", "peak_memory_mb"]
