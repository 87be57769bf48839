"""Nielsen, "Neural Networks and Deep Learning", chapter 6 (`network3.py`): the layers,
the ladder of MNIST networks, their train loop, expanded training data and the studies."""

# How a run executes (lib.nielsen.train's epoch drivers and ensemble layouts), here so a
# command line can list them without importing JAX.
DRIVERS = ("auto", "scan", "loop")
LAYOUTS = ("auto", "vmap", "unrolled", "devices")
