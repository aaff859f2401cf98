"""Training and evaluation loops: pure torch, device- and DDP-agnostic, observed through ``on_step``."""
