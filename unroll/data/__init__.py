"""Optical-flow datasets: readers for the standard folder layouts, and training augmentation."""
