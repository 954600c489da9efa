"""VisionLLM: one model that answers vision-centric tasks through language."""

__version__ = "0.1.0"


def load_pretrained(folder, device="cpu"):
    """The model saved in `folder` (a checkpoint folder: config.json, model.safetensors, tokenizer/), of whichever
    version its config.json's `model_type` names. See `visionllm.models.loading.load_pretrained`."""
    from visionllm.models.loading import load_pretrained as load

    return load(folder, device)
