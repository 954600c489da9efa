"""VisionLLM v1: language-guided image tokenizer + LLM with output-format-as-query decoding."""
