"""Capsule networks: Sabour, Frosst and Hinton, "Dynamic Routing Between Capsules" (NIPS 2017).

`layers` holds the pure pieces (squash, routing by agreement, the margin and
reconstruction losses, the capsule layers), `nets` the CapsNet and the paper's baseline
CNN, `train` the loss and the train step, `pictures` the reconstructions and the
perturbed dimensions of the paper's Figure 4.
"""
