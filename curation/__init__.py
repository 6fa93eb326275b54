"""Curated-YT1B: FAISS cluster-based retrieval curation (paper appendix, Table 11)."""
