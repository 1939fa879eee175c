"""Example services for the README, supervisord.conf, the gateway benchmark and the tests.

In the repository only, not installed (other distributions own a top-level
``examples``): serve them from the repository root, e.g.
``zeromesh-worker examples.mathsvc:svc --bind tcp://127.0.0.1:5555``.
"""
