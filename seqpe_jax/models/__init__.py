"""Host models: attention with PE hooks, the shared Transformer stack, ViT and GPT."""
