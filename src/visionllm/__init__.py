"""VisionLLM: one model that answers vision-centric tasks through language."""

__version__ = "0.1.0"
