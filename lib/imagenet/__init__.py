"""The ImageNet-scale nets (AlexNet, VGG, ResNet, GoogLeNet/Inception, Xception), their
Grain input pipeline and their data-parallel train loop."""
