"""Data side: manifests, the sample world, VideoMix sources, clip decoding and mixing on Ray Data."""
