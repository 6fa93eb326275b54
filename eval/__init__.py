"""Evaluation: attentive probes, action anticipation, feature extraction."""
