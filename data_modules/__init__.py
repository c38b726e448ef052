"""Datasets and LightningDataModules for face-landmark images and videos."""
