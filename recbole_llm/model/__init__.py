"""One module per method; shared layers in layers.py."""
