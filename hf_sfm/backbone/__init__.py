"""The frozen backbone: one pooled feature per image for every supported family, a split's features as a cached
`datasets` column, and the memory controls (gradient checkpointing, chunked embedding) of its differentiable
forward."""
