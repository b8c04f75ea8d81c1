"""metaray: distributed meta-training of recurrent models on Ray."""

__version__ = "0.1.0"
