"""What every method shares: backbone, LoRA, text encoder, generation, client, cache.

Submodules import heavy libraries (transformers, peft) only when used.
"""
