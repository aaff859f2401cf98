"""Mask R-CNN with LESA-ResNet FPN backbones."""
