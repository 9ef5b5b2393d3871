"""Training and evaluation data: sources, mixtures, images, chat templates, the Grain pipeline."""
