"""VisionLLM v2: a chat model linked to task decoders by routing tokens and super-link queries."""
