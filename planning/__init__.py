"""Planning: latent-space CEM over the V-JEPA 2-AC predictor, served by Ray actors."""
