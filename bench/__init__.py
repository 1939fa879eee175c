"""zeromesh's developer benchmarks: the project beside hand-written baselines, in one run.

In the repository only, never installed. ``zeromesh bench`` (``zeromesh._bench``, which
ships with the package; ``python -m bench.mesh`` here) runs the mesh benchmark and
``zeromesh bench --scale`` (``python -m bench.scale``) the mesh with thousands of
simulated peers; ``python bench/codec.py`` times the codec alone; ``python -m bench.broker`` and
``python -m bench.gateway`` measure the broker and the HTTP gateway. See bench/README.md.
"""
