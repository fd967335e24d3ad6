"""Per-frame CNN backbones (torch), each returning pooled features [B, D] from normalised NCHW input."""
