"""Karpathy, "Hacker's guide to Neural Networks": gates and circuits with their local
gradients, and the support vector machine trained by pulling on a circuit."""
