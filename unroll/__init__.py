"""unroll: optical flow in JAX, where classical energies and learned networks are one unrolled solver.

Start with ``unroll.methods.PRESETS`` and ``unroll.estimator.FlowEstimator``, or the ``unroll``
command line. ``docs/concepts.md`` explains the architecture.
"""

__version__ = "0.1.0"
