"""ShapesWorld: a procedural world that exercises every task, written in the public formats."""
