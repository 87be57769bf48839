"""Nielsen, "Neural Networks and Deep Learning", chapter 6 (`network3.py`): the layers,
the ladder of MNIST networks, their train loop, expanded training data and the studies."""
