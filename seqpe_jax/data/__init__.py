"""Input pipelines: images, text and retrieval tasks."""
