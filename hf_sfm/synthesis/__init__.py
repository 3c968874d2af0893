"""The synthetic images (pixel or pyramid parameterisations) and the differentiable augmentation applied to them
at every step."""
