"""Datasets: ImageNet folders, COCO instances, and generated datasets in both layouts."""
