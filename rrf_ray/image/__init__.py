"""Relative rewards between two image diffusion pipelines: Stable Diffusion vs Safe Stable Diffusion (docs/image.md).

Needs the `image` extra (`pip install -e '.[image]'`): transformers for the text encoder.
"""
