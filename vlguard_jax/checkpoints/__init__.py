"""Reading and writing Hugging Face checkpoints."""
