"""Example services used by ``zeromesh demo``, the README and the tests."""
