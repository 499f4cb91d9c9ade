"""Scoring predicted segmentations against references in nnU-Net v2's format: overlap
(Dice, IoU), surface distances in millimetres (HD95, ASSD, NSD) and volume difference."""
