"""ShapesWorld, readers for the public formats, and the one sample type they produce."""
