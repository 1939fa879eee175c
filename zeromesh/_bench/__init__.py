"""The benchmark ``zeromesh bench`` runs, shipped with the package so a plain install has it.

`mesh` is the runner, `echosvc` the service its workers serve and `raw` the
hand-written raw-pyzmq baseline, all started as child processes by module name. Only
``zeromesh._cli`` imports this package; the library never does. The developer-only
benchmarks (codec, broker, gateway) stay in the repository's ``bench/``.
"""
