"""Training: masks, losses, V-JEPA 2 pretraining and 2-AC post-training on Ray Train with FSDP2."""
