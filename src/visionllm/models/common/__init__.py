"""Parts shared by the model versions: backbone and text-encoder adapters, matching, DETR losses."""
