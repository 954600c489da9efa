"""Serving: an OpenAI-compatible HTTP app with dynamic batching, and the web page.

`create_app(model, settings)` builds the FastAPI app; `visionllm serve` runs it under uvicorn.
"""
