"""treeclip: an open implementation of BioCLIP, the vision foundation model for the tree of life."""

__version__ = "0.1.0"
