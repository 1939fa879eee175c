"""zeromesh benchmarks: the project beside hand-written baselines, in the same run.

``zeromesh bench`` runs `bench.mesh`; ``python bench/codec.py`` times the codec alone.
Nothing here is imported by the library itself.
"""
