"""V-JEPA 2 networks in plain PyTorch: no Ray, no I/O beyond checkpoint files."""
