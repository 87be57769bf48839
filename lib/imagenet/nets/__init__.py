"""The model zoo: each net as a Flax module, variants as `functools.partial`, and a
registry by name."""
