"""Model parts: common/ (shared by v1 and v2) and v1/ (VisionLLM)."""
