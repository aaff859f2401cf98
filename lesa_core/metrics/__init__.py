"""Metrics: top-k accuracy and COCO evaluation as flat metric dicts."""
