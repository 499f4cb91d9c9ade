"""Scoring predicted segmentations against references (Dice, IoU) in nnU-Net v2's format."""
