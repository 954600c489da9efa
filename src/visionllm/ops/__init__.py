"""Pure functions on boxes, polygons and masks."""
